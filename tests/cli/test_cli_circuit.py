"""`actstore circuit` on the trained demo model's IOI pairs: every method's scores, the
pruned circuit and its faithfulness curve stored with dimension names and attributes;
the stored exact scores of the top edges equal single-edge patches written with hooks,
and the stored faithfulness of the --top circuit equals a hooked circuit run (tolerance
1e-4 of the reference's spread, asserted large); figures written; bad input refused
before any work, with one line on stderr and exit code 2."""

from __future__ import annotations

import json
import os
from functools import partial

import numpy as np
import pytest
import torch
import zarr

from actstore.circuits.graph import Graph
from actstore.cli import main
from actstore.store import ResultWriter

from .. import helpers
from ..circuits.test_faithfulness import hooked_circuit_logits
from ..fidelity_cases import assert_close_rel, boot

METHODS = ("exact", "eap", "eap-ig-inputs", "eap-ig-activations")


pytestmark = pytest.mark.usefixtures("one_thread")


# the message's prefix is not checked here
one_line_error = partial(helpers.one_line_error, prefix=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("circuit") / "ioi.zarr"
    argv = [
        "circuit",
        "--model",
        "actstore-demo",
        "--task",
        "ioi",
        "--n-pairs",
        "6",
        "--method",
        ",".join(METHODS),
        "--steps",
        "3",
        "--top",
        "25",
        "--batch-pairs",
        "4",
        "--out",
        str(out),
        "--quiet",
    ]
    return out, argv


@pytest.fixture(scope="module")
def result(run):
    out, argv = run
    assert main(argv) == 0
    return out


def test_stores_every_method_with_dims_and_attrs(result):
    g = zarr.open_group(str(result), mode="r")
    n = Graph(4, 4).n_edges
    for method in METHODS:
        grp = g[f"circuit/{method}"]
        dims = {k: grp[k].metadata.dimension_names for k in grp.array_keys()}
        assert (
            dims["scores"]
            == dims["edge"]
            == dims["src"]
            == dims["dst"]
            == dims["circuit"]
            == ("edge",)
        )
        assert dims["faithfulness"] == dims["circuit_metric"] == ("size", "pair")
        assert dims["sizes"] == dims["n_edges"] == dims["faithfulness_mean"] == ("size",)
        assert grp["scores"].shape == (n,) and list(grp["edge"][:3]) == list(Graph(4, 4).names[:3])
        attrs = dict(grp["scores"].attrs)
        assert attrs["method"] == method and attrs["task"] == "ioi" and attrs["n_pairs"] == 6
        assert (
            attrs["metric"] == "logit-diff"
            and attrs["steps"] == 3
            and "transformer-lens" in attrs["software"]
        )
        assert attrs["command_line"].startswith("actstore circuit --model actstore-demo")
        sizes, f = grp["sizes"][:], grp["faithfulness"][:]
        assert sizes[0] == 0 and sizes[-1] == n and 25 in sizes and f.shape == (len(sizes), 6)
        np.testing.assert_allclose(f[0], 0, atol=1e-4)  # nothing kept: the corrupted run
        np.testing.assert_allclose(f[-1], 1, atol=1e-4)  # everything: the clean run
        assert grp["circuit"][:].sum() == grp["n_edges"][list(sizes).index(25)] <= 25
        if method != "exact":
            c = attrs["correlation_with_exact"]
            assert set(c) >= {"pearson", "spearman", "top_overlap"} and -1 <= c["pearson"] <= 1


def test_figures(result):
    base = str(result)[:-5]
    for method in METHODS:
        for ext in ("png", "dot", "json"):
            assert os.path.getsize(f"{base}.{method}.circuit.{ext}") > 100
        if method != "exact":
            assert os.path.getsize(f"{base}.{method}-vs-exact.png") > 1000
    assert os.path.getsize(f"{base}.faithfulness.png") > 1000
    drawn = json.load(open(f"{base}.exact.circuit.json"))
    stored = zarr.open_group(str(result), mode="r")["circuit/exact"]
    assert [e["edge"] for e in drawn["edges"]] == list(stored["edge"][:][stored["circuit"][:]])
    assert open(f"{base}.exact.circuit.dot").read().startswith("digraph circuit {")


def test_exact_scores_and_faithfulness_equal_hooked_runs(result):
    from actstore.demo import demo_model_dir

    grp = zarr.open_group(str(result), mode="r")["circuit/exact"]
    bridge = boot(demo_model_dir())
    g = Graph.from_model(bridge)
    clean = torch.as_tensor(grp["clean_tokens"][:], dtype=torch.long)
    corrupted = torch.as_tensor(grp["corrupted_tokens"][:], dtype=torch.long)
    from actstore.patching import tasks

    # the run's pairs (deterministic from the seed)
    made = tasks.make_pairs("ioi", 6, 0, bridge.tokenizer)
    tok = lambda s: bridge.tokenizer(s, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    answer, wrong = (
        torch.tensor([tok(p.answer) for p in made]),
        torch.tensor([tok(p.wrong) for p in made]),
    )
    b = torch.arange(len(made))
    ld = lambda logits: logits[b, -1, answer] - logits[b, -1, wrong]  # noqa: E731  # (pair,)
    with torch.no_grad():
        clean_logits, corr_logits = bridge(clean), bridge(corrupted)
    np.testing.assert_allclose(grp["clean_metric"][:], ld(clean_logits).numpy(), rtol=0, atol=1e-4)
    # exact scores of the 3 best edges and 3 others: the corrupted run with that one edge reading clean
    scores = grp["scores"][:]
    order = np.argsort(-np.abs(scores))
    edges = list(order[:3]) + list(order[[40, 200, 400]])
    base = ld(corr_logits).mean()
    want = []
    for e in edges:
        mask = np.ones(g.n_edges, bool)
        mask[e] = False
        want.append(
            float(ld(hooked_circuit_logits(bridge, g, corrupted, clean, mask)).mean() - base)
        )
    assert_close_rel(
        torch.tensor(scores[edges], dtype=torch.float64),
        torch.tensor(want, dtype=torch.float64),
        min_spread=1.0,
        what="exact edge scores",
    )
    # the --top circuit's faithfulness per pair
    at = list(grp["sizes"][:]).index(25)
    mask = grp["circuit"][:]
    got = torch.as_tensor(grp["circuit_metric"][at], dtype=torch.float64)
    ref = ld(hooked_circuit_logits(bridge, g, clean, corrupted, mask)).double()
    assert_close_rel(got, ref, min_spread=0.5, what="circuit run logit differences")


def test_refuses_before_work(tmp_path, result, run, capsys):
    out, argv = run
    stamp = os.path.getmtime(os.path.join(out, "circuit", "exact", "scores", "zarr.json"))
    assert "--overwrite" in one_line_error(capsys, argv)  # the result exists
    assert os.path.getmtime(os.path.join(out, "circuit", "exact", "scores", "zarr.json")) == stamp
    base = [
        "circuit",
        "--model",
        "actstore-demo",
        "--task",
        "ioi",
        "--n-pairs",
        "2",
        "--out",
        str(tmp_path / "x.zarr"),
    ]
    assert "eap, eap-ig-inputs" in one_line_error(capsys, base + ["--method", "exact,eep"])
    assert "--steps must be at least 1" in one_line_error(capsys, base + ["--steps", "0"])
    assert "at most 479" in one_line_error(capsys, base + ["--top", "480"])
    assert "--pairs FILE" in one_line_error(capsys, base[:3] + ["--out", str(tmp_path / "x.zarr")])
    assert "A:B" in one_line_error(
        capsys, base + ["--store", str(tmp_path / "s.zarr"), "--clean-rows", "3"]
    )
    assert "is the clean store" in one_line_error(
        capsys, base + ["--store", str(tmp_path / "x.zarr")]
    )
    assert not os.path.exists(tmp_path / "x.zarr")
    import actstore

    actstore.cache(
        out=str(tmp_path / "s.zarr"),
        model="actstore-demo",
        dataset=["Mary and John went home."],
        packing="document",
        seq_len=16,
        sites="resid_pre:all",
        progress=False,
    )
    err = one_line_error(capsys, base + ["--store", str(tmp_path / "s.zarr")])
    assert "--sites z:all,mlp_out:all,resid_pre:0" in err
    ResultWriter(str(tmp_path / "y.zarr"), "circuit/eap").write("scores", np.zeros(3), ("edge",))
    assert "--overwrite" in one_line_error(
        capsys, base[:-1] + [str(tmp_path / "y.zarr"), "--method", "eap"]
    )


def test_clean_activations_from_a_store(tmp_path, result):
    """--store: a new store is cached from the clean prompts and the exact scores read from
    it equal those of the clean forward."""
    out = tmp_path / "stored.zarr"
    assert (
        main(
            [
                "circuit",
                "--model",
                "actstore-demo",
                "--task",
                "ioi",
                "--n-pairs",
                "6",
                "--method",
                "exact",
                "--top",
                "25",
                "--store",
                str(tmp_path / "clean.zarr"),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    got = zarr.open_group(str(out), mode="r")["circuit/exact/scores"]
    want = zarr.open_group(str(result), mode="r")["circuit/exact/scores"][:]
    assert got.attrs["clean_source"].startswith("store")
    assert_close_rel(
        torch.as_tensor(got[:], dtype=torch.float64),
        torch.as_tensor(want, dtype=torch.float64),
        min_spread=1.0,
        what="exact scores from a store",
    )
