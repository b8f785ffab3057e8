"""`actstore patch`: results equal transformer_lens.patching per pair (on the trained
demo model with held-out IOI pairs, and on the sharp tiny model: tolerance 1e-4 of
the reference's spread, asserted large), with dimension names and a heatmap; bad input
is one line on stderr and exit code 2. The command needs transformer_lens>=4 (its
per-pair results)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr
from transformer_lens import patching as tlp

import actstore
from actstore import patching as ap
from actstore.cli import main

from ..conftest import needs_tl4
from ..fidelity_cases import assert_close_rel, boot
from ..helpers import one_line_error

PAIRS = [
    {
        "clean": "When Mary and John went to the store, John gave a drink to",
        "corrupted": "When Mary and John went to the store, Mary gave a drink to",
        "answer": " Mary",
        "wrong": " John",
    },
    {
        "clean": "When Tom and Anna went to the park, Anna gave a ball to",
        "corrupted": "When Tom and Anna went to the park, Tom gave a ball to",
        "answer": " Tom",
        "wrong_answer": " Anna",
    },
    {
        "clean": "When Alice and Bob went to the shop, Bob gave a book to",
        "corrupted": "When Alice and Bob went to the shop, Alice gave a book to",
        "answer": " Alice",
        "wrong": " Bob",
    },
]


pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny forwards


def write_pairs(path, pairs) -> str:
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return str(path)


@pytest.fixture(scope="module")
def sharp(sharp_model):
    return boot(sharp_model)


def reference(bridge, tokenizer, fn_name: str, pairs=PAIRS, module=tlp) -> np.ndarray:
    """transformer_lens.patching's (or ``module``'s) per-pair logit differences, (pair, *cells)."""
    tok = lambda t: [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    clean = torch.tensor([tok(p["clean"]) for p in pairs])
    corrupted = torch.tensor([tok(p["corrupted"]) for p in pairs])
    answer = [tok(p["answer"])[1] for p in pairs]
    wrong = [tok(p.get("wrong", p.get("wrong_answer")))[1] for p in pairs]
    # transformer_lens writes its patch into the hooked tensor (see test_fidelity)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(clean)
    with torch.no_grad() if module is tlp else torch.enable_grad():
        res = getattr(module, fn_name)(
            bridge, corrupted, cache, ap.LogitDiff(answer, wrong, per_example=True), reduce="none"
        )
    return res.values.movedim(-1, 0).detach().numpy()


def close(got, want, bridge, tokens, min_spread=0.05):
    with torch.no_grad():
        scale = float(bridge(tokens).abs().max())
    assert_close_rel(
        torch.as_tensor(got), torch.as_tensor(want), min_spread=min_spread, scale=scale
    )


@needs_tl4
def test_patch_on_the_demo_model_equals_transformer_lens(tmp_path):
    """Held-out IOI pairs that differ at position 10 (the engine reuses 10 positions' keys
    and values): per-pair resid_mid values equal the reference's (spread ~19)."""
    from actstore.demo import data as demo_data
    from actstore.demo import demo_model_dir, demo_tokenizer

    pairs = demo_data.ioi_pairs(5, template=0)
    out = tmp_path / "demo.zarr"
    assert (
        main(
            [
                "patch",
                "--model",
                "actstore-demo",
                "--pairs",
                write_pairs(tmp_path / "p.jsonl", pairs),
                "--sweep",
                "resid_mid",
                "--out",
                str(out),
                "--batch-pairs",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    ld = zarr.open_group(str(out), mode="r")["patching/resid_mid/logit_diff"][...]
    bridge, tok = boot(demo_model_dir()), demo_tokenizer()
    want = reference(bridge, tok, "get_act_patch_resid_mid", pairs)
    close(
        ld,
        want,
        bridge,
        torch.tensor([[tok.bos_token_id] + tok(pairs[0]["corrupted"])["input_ids"]]),
        5.0,
    )


@needs_tl4
def test_patch_resid_pre_to_a_results_group(tmp_path, sharp_model, sharp, tokenizer, capsys):
    pairs = write_pairs(tmp_path / "ioi.jsonl", PAIRS)
    out = tmp_path / "res.zarr"
    assert (
        main(
            [
                "patch",
                "--model",
                sharp_model,
                "--pairs",
                pairs,
                "--sweep",
                "resid_pre",
                "--out",
                str(out),
                "--batch-pairs",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    g = zarr.open_group(str(out), mode="r")
    ld = g["patching/resid_pre/logit_diff"]
    assert ld.metadata.dimension_names == ("pair", "layer", "pos") and ld.shape == (3, 3, 15)
    close(
        ld[...],
        reference(sharp, tokenizer, "get_act_patch_resid_pre"),
        sharp,
        torch.tensor([[0] * 15]),
    )
    clean, corr = (
        g["patching/resid_pre/clean_logit_diff"][...],
        g["patching/resid_pre/corrupted_logit_diff"][...],
    )
    norm = g["patching/resid_pre/normalised"]
    assert norm.metadata.dimension_names == ("layer", "pos")
    np.testing.assert_allclose(
        norm[...], (ld[...].mean(0) - corr.mean()) / (clean.mean() - corr.mean()), atol=1e-5
    )
    assert g["patching/resid_pre/clean_tokens"].metadata.dimension_names == ("pair", "pos")
    assert ld.attrs["sweep"] == "resid_pre" and ld.attrs["command_line"].startswith(
        "actstore patch"
    )
    png = tmp_path / "res.resid_pre.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same sweep again is refused without --overwrite (nothing is silently replaced)
    assert (
        main(
            [
                "patch",
                "--model",
                sharp_model,
                "--pairs",
                pairs,
                "--sweep",
                "resid_pre",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )
    assert "--overwrite" in capsys.readouterr().err


@needs_tl4
def test_patch_heads_with_clean_activations_from_a_store(tmp_path, sharp_model, sharp, tokenizer):
    pairs = write_pairs(tmp_path / "ioi.jsonl", PAIRS)
    store_path = tmp_path / "clean.zarr"  # does not exist: cached from the clean prompts first
    assert (
        main(
            [
                "patch",
                "--model",
                sharp_model,
                "--pairs",
                pairs,
                "--sweep",
                "attn_head_out_all_pos",
                "--store",
                str(store_path),
                "--quiet",
            ]
        )
        == 0
    )
    store = actstore.ActivationStore.open(store_path)
    assert store.sites == [f"blocks.{i}.attn.hook_z" for i in range(3)]
    ld = store.load_result("patching/attn_head_out_all_pos/logit_diff")
    assert ld.metadata.dimension_names == ("pair", "layer", "head")
    close(
        ld[...],
        reference(sharp, tokenizer, "get_act_patch_attn_head_out_all_pos"),
        sharp,
        torch.tensor([[0] * 15]),
    )
    assert (tmp_path / "clean.attn_head_out_all_pos.png").exists()


@needs_tl4
def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_model, capsys):
    base = [
        "patch",
        "--model",
        tiny_model,
        "--sweep",
        "resid_pre",
        "--out",
        str(tmp_path / "r.zarr"),
        "--quiet",
    ]
    uneven = dict(
        PAIRS[0], corrupted="When Mary and John went to the big store, Mary gave a drink to"
    )
    err = one_line_error(capsys, base + ["--pairs", write_pairs(tmp_path / "a.jsonl", [uneven])])
    assert (
        "clean prompt is 15 tokens and the corrupted one 16" in err and "same token length" in err
    )
    long_answer = dict(PAIRS[0], answer=" Maryanne Smith")
    err = one_line_error(
        capsys, base + ["--pairs", write_pairs(tmp_path / "b.jsonl", [long_answer])]
    )
    assert "answer ' Maryanne Smith' is" in err and "one-token" in err
    mixed = [
        PAIRS[0],
        dict(PAIRS[1], clean="Tom and Anna met, Anna", corrupted="Tom and Anna met, Tom"),
    ]
    err = one_line_error(capsys, base + ["--pairs", write_pairs(tmp_path / "c.jsonl", mixed)])
    assert "different token lengths" in err and "Split the file by length" in err
    err = one_line_error(
        capsys, base + ["--pairs", write_pairs(tmp_path / "d.jsonl", [{"clean": "x"}])]
    )
    assert "no field 'corrupted', 'answer', 'wrong'" in err
    # silently wrong before (exit 0, an all-NaN normalised result): refused, naming the line and why
    same_answer = dict(PAIRS[0], wrong="Mary")  # ' Mary' / 'Mary' differ; ' Mary' / ' Mary' do not
    err = one_line_error(
        capsys,
        base
        + [
            "--pairs",
            write_pairs(tmp_path / "e.jsonl", [same_answer, PAIRS[0] | {"wrong": " Mary"}]),
        ],
    )
    assert "e.jsonl:2: answer ' Mary' and wrong ' Mary' are the same token (5335)" in err
    no_change = dict(PAIRS[0], corrupted=PAIRS[0]["clean"])
    err = one_line_error(
        capsys, base + ["--pairs", write_pairs(tmp_path / "f.jsonl", [PAIRS[2], no_change])]
    )
    assert (
        "f.jsonl:2: the clean and corrupted prompts are the same tokens" in err and "0 / 0" in err
    )
    (tmp_path / "g.jsonl").write_bytes(b'{"clean": "caf\xe9"}\n')
    err = one_line_error(capsys, base + ["--pairs", str(tmp_path / "g.jsonl")])
    assert "g.jsonl' is not UTF-8 text" in err
    assert not (tmp_path / "r.zarr").exists()  # nothing written on bad input


@needs_tl4
def test_a_read_only_folder_is_refused_before_the_sweep(tmp_path, tiny_model, capsys, monkeypatch):
    import shutil

    from actstore.patching import job

    from ..readonly import read_only_copy

    # readable by anyone in the copy, as the pairs
    shutil.copytree(tiny_model, tmp_path / "folder" / "model")
    write_pairs(tmp_path / "folder" / "p.jsonl", PAIRS[:1])
    with read_only_copy(tmp_path / "folder") as ro:
        monkeypatch.setattr(job.patching, "LogitDiff", lambda *a, **k: pytest.fail("the sweep ran"))
        err = one_line_error(
            capsys,
            [
                "patch",
                "--model",
                str(ro / "model"),
                "--pairs",
                str(ro / "p.jsonl"),
                "--out",
                str(ro / "r.zarr"),
                "--quiet",
            ],
        )
    assert (
        "Cannot write results of the resid_pre sweep" in err
        and "pass --out a path you can write" in err
    )


@needs_tl4
def test_a_pair_and_its_swap_cancel_out_and_are_refused(tmp_path, sharp_model, capsys):
    """Each pair is sound, but the mean clean and corrupted logit differences are equal:
    the normalised effect would be noise / noise. Nothing is written."""
    swapped = dict(PAIRS[0], clean=PAIRS[0]["corrupted"], corrupted=PAIRS[0]["clean"])
    out = tmp_path / "r.zarr"
    err = one_line_error(
        capsys,
        [
            "patch",
            "--model",
            sharp_model,
            "--sweep",
            "resid_pre",
            "--out",
            str(out),
            "--pairs",
            write_pairs(tmp_path / "s.jsonl", [PAIRS[0], swapped]),
            "--quiet",
        ],
    )
    assert (
        "mean clean and corrupted logit differences are the same" in err
        and "nothing was written" in err
    )
    assert not out.exists()


@needs_tl4
def test_store_of_another_model_is_refused(tmp_path, tiny_model, capsys):
    from actstore.demo import build_random_gpt2

    from ..conftest import TINY

    other = build_random_gpt2(tmp_path / "other", seed=11, **TINY)
    pairs = write_pairs(tmp_path / "ioi.jsonl", PAIRS)
    store = tmp_path / "clean.zarr"
    assert (
        main(["patch", "--model", str(other), "--pairs", pairs, "--store", str(store), "--quiet"])
        == 0
    )
    err = one_line_error(
        capsys,
        [
            "patch",
            "--model",
            tiny_model,
            "--pairs",
            pairs,
            "--store",
            str(store),
            "--out",
            str(tmp_path / "r.zarr"),
            "--quiet",
        ],
    )
    assert "cached with another model" in err and "fingerprint" in err


# --- --method attribution|both, --task ------------------------------------------------------------


@needs_tl4
def test_task_with_both_methods(tmp_path, sharp_model, sharp, tokenizer, capsys):
    from actstore.patching import attribution, tasks

    out, written = tmp_path / "r.zarr", tmp_path / "ioi.pairs.jsonl"
    assert (
        main(
            [
                "patch",
                "--model",
                sharp_model,
                "--task",
                "ioi",
                "--n-pairs",
                "4",
                "--seed",
                "1",
                "--sweep",
                "attn_head_out_all_pos",
                "--method",
                "both",
                "--out",
                str(out),
                "--write-pairs",
                str(written),
                "--batch-pairs",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out  # the correlation is printed even with --quiet
    assert printed.startswith("attribution vs exact (attn_head_out_all_pos): Pearson r = ")
    records = [json.loads(line) for line in written.read_text().splitlines()]
    assert records == [p.to_json() for p in tasks.make_pairs("ioi", 4, seed=1, tokenizer=tokenizer)]
    g = zarr.open_group(str(out), mode="r")["patching/attn_head_out_all_pos"]
    for name, module in (("logit_diff", tlp), ("attribution_logit_diff", attribution)):
        arr = g[name]
        assert arr.metadata.dimension_names == ("pair", "layer", "head") and arr.shape == (4, 3, 4)
        want = reference(sharp, tokenizer, "get_act_patch_attn_head_out_all_pos", records, module)
        close(arr[...], want, sharp, torch.tensor([[0] * 15]), min_spread=0.01)
    assert g["attribution_normalised"].metadata.dimension_names == ("layer", "head")
    attrs = dict(g["attribution_logit_diff"].attrs)
    assert attrs["method"] == "both" and attrs["task"] == "ioi" and attrs["seed"] == 1
    corr = attrs["correlation"]
    want_r = attribution.compare(g["normalised"][...], g["attribution_normalised"][...])["pearson"]
    assert corr["pearson"] == pytest.approx(want_r, abs=1e-6) and corr["n_cells"] == 12
    assert f"Pearson r = {corr['pearson']:.3f}" in printed
    for suffix in ("", ".attribution", ".attribution-vs-exact"):
        assert (tmp_path / f"r.attn_head_out_all_pos{suffix}.png").read_bytes()[:4] == b"\x89PNG"


@needs_tl4
def test_attribution_alone_replaces_exact_results_with_overwrite(tmp_path, tiny_model):
    pairs = write_pairs(tmp_path / "ioi.jsonl", PAIRS)
    out = tmp_path / "r.zarr"
    base = [
        "patch",
        "--model",
        tiny_model,
        "--pairs",
        pairs,
        "--sweep",
        "resid_pre",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(base) == 0
    assert main(base + ["--method", "attribution", "--overwrite"]) == 0
    g = zarr.open_group(str(out), mode="r")["patching/resid_pre"]
    assert sorted(g.array_keys()) == [
        "attribution_logit_diff",
        "attribution_normalised",
        "clean_logit_diff",
        "clean_tokens",
        "corrupted_logit_diff",
        "corrupted_tokens",
    ]
    assert g["attribution_logit_diff"].attrs["method"] == "attribution"
    assert (tmp_path / "r.resid_pre.attribution.png").exists()


@needs_tl4
def test_task_and_method_bad_input(tmp_path, tiny_model, capsys):
    out = tmp_path / "r.zarr"
    base = ["patch", "--model", tiny_model, "--out", str(out), "--quiet"]
    err = one_line_error(capsys, base + ["--task", "iio"])
    assert (
        "Unknown task 'iio' (did you mean 'ioi'?); expected one of ioi, ioi-flip, repeated-name"
        in err
    )
    err = one_line_error(capsys, base + ["--task", "factual"])
    assert "--task factual reads facts from a file: pass --facts FILE" in err
    err = one_line_error(
        capsys, base + ["--task", "factual", "--facts", str(tmp_path / "none.jsonl")]
    )
    assert "Facts file" in err and "not found" in err
    facts = tmp_path / "facts.jsonl"
    facts.write_text(
        json.dumps({"prompt": "The capital of Japan is", "answer": " Tokyo"})
        + "\n"
        + json.dumps({"prompt": "The capital of Peru is", "answer": " Lima, Peru"})
        + "\n"
    )
    err = one_line_error(capsys, base + ["--task", "factual", "--facts", str(facts)])
    assert "facts.jsonl:2: answer ' Lima, Peru' is 3 tokens" in err and "one-token" in err
    err = one_line_error(
        capsys, base + ["--task", "ioi", "--pairs", write_pairs(tmp_path / "p.jsonl", PAIRS)]
    )
    assert "Pass either --pairs FILE" in err and "not both" in err
    assert "not neither" in one_line_error(capsys, base)
    assert "--facts applies to --task factual only" in one_line_error(
        capsys, base + ["--task", "ioi", "--facts", str(facts)]
    )
    assert "Unknown method 'fast'" in one_line_error(
        capsys, base + ["--task", "ioi", "--method", "fast"]
    )
    kept = tmp_path / "kept.jsonl"
    kept.write_text("mine\n")
    err = one_line_error(capsys, base + ["--task", "ioi", "--write-pairs", str(kept)])
    assert "kept.jsonl already exists; pass --overwrite" in err and kept.read_text() == "mine\n"
    assert not out.exists()  # nothing written on bad input


def test_transformer_lens_3_is_refused_up_front(tmp_path, monkeypatch, capsys):
    """TransformerLens 3 has no PatchingResult: one line naming the fix, before any model loads."""
    from actstore import models

    monkeypatch.setattr(ap.sweeps, "PatchingResult", None)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    err = one_line_error(
        capsys,
        [
            "patch",
            "--model",
            "actstore-demo",
            "--pairs",
            write_pairs(tmp_path / "p.jsonl", PAIRS),
            "--sweep",
            "resid_pre",
            "--quiet",
        ],
    )
    assert "needs transformer_lens>=4" in err and "pip install 'transformer_lens>=4,<4.4'" in err
