"""The analyses refuse what would give a silently wrong answer (a NaN ranked, all zeros,
scores at the wrong offsets) and what used to end in a traceback, with one clear error
before the work; and they never rank a site that is not stored."""

import json

import numpy as np
import pytest

import actstore
from actstore.analysis import (
    direct_logit_attribution,
    induction_scores,
    logit_lens,
    model_for,
    single_token,
)
from actstore.cli import main
from actstore.errors import ConfigError

from ..readonly import read_only_copy

H = 5


@pytest.fixture(scope="module")
def rep_store(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("bad") / "rep.zarr"
    return actstore.cache(
        out=str(out),
        model=tiny_model,
        dataset=f"repeated-random:{H}",
        seq_len=2 * H + 1,
        n_rows=4,
        sites="pattern:all",
        progress=False,
    )


@pytest.fixture(scope="module")
def own_repeats(tmp_path_factory, tiny_model):
    """Repeated sequences of the user's own (not the synthetic corpus): ' a b c a b c'."""
    out = tmp_path_factory.mktemp("bad") / "own.zarr"
    return actstore.cache(
        out=str(out),
        model=tiny_model,
        dataset=[" a b c a b c", " d e f d e f", " g h i g h i"],
        packing="document",
        seq_len=7,
        sites="pattern:1",
        progress=False,
    )


@pytest.fixture(scope="module")
def partial(tmp_path_factory, tiny_model):
    """z of layer 1 only (of 0..2), padded rows of different lengths."""
    out = tmp_path_factory.mktemp("bad") / "partial.zarr"
    return actstore.cache(
        out=str(out),
        model=tiny_model,
        dataset=["When Mary and John went to the", "A short one."],
        packing="document",
        seq_len=10,
        sites="resid_post:2,z:1,mlp_out:all",
        progress=False,
    )


def test_induction_takes_the_half_length_from_the_store(rep_store):
    assert induction_scores(rep_store, progress=False).half_len == H
    same = induction_scores(rep_store, half_len=H, progress=False)
    np.testing.assert_array_equal(
        same.induction, induction_scores(rep_store, progress=False).induction
    )
    with pytest.raises(
        ConfigError,
        match=rf"--half-len 3 contradicts the store's corpus 'repeated-random:{H}' "
        rf"\(half length {H}\); leave --half-len out",
    ):
        induction_scores(rep_store, half_len=3, progress=False)


def test_induction_on_own_repeats_checks_the_half_length(own_repeats):
    got = induction_scores(own_repeats, half_len=3, progress=False)
    assert (
        got.half_len == 3
        and np.isfinite(got.induction[1]).all()
        and np.isnan(got.induction[0]).all()
    )
    with pytest.raises(
        ConfigError, match=r"3 of the 3 rows do not repeat with half length 2 \(first: row 0"
    ):
        induction_scores(own_repeats, half_len=2, progress=False)
    with pytest.raises(ConfigError, match=r"cannot hold BOS \+ 2 x 4 tokens"):
        induction_scores(own_repeats, half_len=4, progress=False)
    with pytest.raises(ConfigError, match="not made from repeated random tokens"):
        induction_scores(own_repeats, progress=False)


def test_dla_refuses_a_wrong_token_equal_to_the_target_and_positions_it_cannot_read(partial):
    model = model_for(partial, device="cpu")
    mary = single_token(model.tokenizer, " Mary")
    with pytest.raises(
        ConfigError,
        match=r"target and the wrong token are the same token .* every logit difference is 0",
    ):
        direct_logit_attribution(partial, model, [0], mary, mary, progress=False)
    with pytest.raises(
        ConfigError,
        match=r"Position 99 is outside the store's rows of 10 tokens; pass a position in 0..9",
    ):
        direct_logit_attribution(partial, model, [0, 1], mary, pos=99, progress=False)
    last = [int(np.flatnonzero(partial.mask(r))[-1]) for r in (0, 1)]
    assert last[0] > last[1]  # row 1 is shorter
    with pytest.raises(
        ConfigError,
        match=rf"Position {last[0]} is padding in 1 of the 2 rows \(first: row 1, whose "
        rf"last real token is at {last[1]}\)",
    ):
        direct_logit_attribution(partial, model, [0, 1], mary, pos=last[0], progress=False)
    # -10 = BOS, in every row
    at = direct_logit_attribution(partial, model, [0, 1], mary, pos=-10, progress=False)
    assert at.positions == [0, 0]


def test_dla_ranks_only_the_heads_whose_z_is_cached(partial, capsys, tmp_path):
    assert (
        main(
            [
                "analyze",
                "dla",
                partial.path,
                "--target",
                " Mary",
                "--figure",
                str(tmp_path / "d.png"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    ranked = [
        line
        for line in out.splitlines()
        if line.startswith("  ") and ":" in line and "(" not in line
    ]
    assert len(ranked) == 4 and all(line.strip().startswith("1.") for line in ranked), out
    assert (
        "nan" not in out and "z is not cached for layers 0, 2: its heads are not attributed" in out
    )
    assert (
        main(
            [
                "analyze",
                "dla",
                partial.path,
                "--target",
                " Mary",
                "--json",
                "--no-save",
                "--figure",
                "none",
            ]
        )
        == 0
    )
    numbers = json.loads(
        capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in JSON")
    )
    assert numbers["heads"][0] == [None] * 4 and all(
        isinstance(v, float) for v in numbers["heads"][1]
    )
    assert numbers["results"] == [] and numbers["figure"] is None
    assert main(["analyze", "dla", partial.path, "--target", " Mary", "--wrong", " Mary"]) == 2
    assert "same token" in capsys.readouterr().err


def test_logit_lens_k(partial):
    model = model_for(partial, device="cpu")
    for k in (0, -1):
        with pytest.raises(
            ConfigError, match=rf"top tokens kept per position: at least 1; got {k}"
        ):
            logit_lens(partial, model, [0], k=k, progress=False)
    with pytest.raises(
        ConfigError, match=r"k \(--k\) 50258 is more than the model's vocabulary of 50257 tokens"
    ):
        logit_lens(partial, model, [0], k=50258, progress=False)


@pytest.mark.parametrize(
    "rows,want",
    [("-2:", [0, 1]), ("-1", [1]), ("-2:-1", [0]), (":-1", [0]), ("1", [1]), (":", [0, 1])],
)
def test_rows_count_from_the_end(partial, capsys, rows, want):
    for spelling in (["--rows", rows], [f"--rows={rows}"]):
        assert (
            main(
                [
                    "analyze",
                    "dla",
                    partial.path,
                    "--target",
                    " Mary",
                    *spelling,
                    "--json",
                    "--no-save",
                    "--figure",
                    "none",
                ]
            )
            == 0
        )
        assert json.loads(capsys.readouterr().out)["rows"] == want
    assert (
        main(
            [
                "analyze",
                "logit-lens",
                partial.path,
                "--rows",
                rows,
                "--json",
                "--no-save",
                "--figure",
                "none",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["rows"] == want


@pytest.mark.parametrize("rows", ["-3:", "2", "1:1", "-1:0", "1:2:1", "-", "a:b", ""])
def test_rows_that_name_no_row_are_refused(partial, capsys, rows):
    assert main(["analyze", "logit-lens", partial.path, "--rows", rows, "--no-save"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (
        "outside the store's rows 0..1" in err or "expected 'A:B' or 'N'" in err
    ), err


def test_a_read_only_store_is_refused_before_the_analysis(rep_store, partial, capsys, monkeypatch):
    from actstore.analysis import induction

    def no_work(*a, **k):
        raise AssertionError("the analysis ran")

    with read_only_copy(rep_store.path) as ro:
        monkeypatch.setattr(induction, "parse_synthetic", no_work)
        assert main(["analyze", "induction", str(ro), "--figure", "none"]) == 2
        err = capsys.readouterr().err
        assert (
            "Cannot write the result 'results/analysis/induction'" in err
            and "pass --no-save" in err
        ), err
        # the figure beside the store
        assert main(["analyze", "induction", str(ro), "--no-save"]) == 2
        assert "Cannot write the figure" in capsys.readouterr().err
        monkeypatch.undo()
        assert main(["analyze", "induction", str(ro), "--no-save", "--figure", "none"]) == 0
        assert "results: not saved (--no-save)" in capsys.readouterr().out
    with read_only_copy(partial.path) as ro:
        # before the model loads
        assert main(["analyze", "logit-lens", str(ro), "--figure", "none"]) == 2
        assert "Cannot write the result 'results/analysis/logit_lens'" in capsys.readouterr().err
