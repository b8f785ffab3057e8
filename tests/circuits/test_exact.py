"""Exact edge patching (actstore.circuits.exact) equals single-edge patches written with
hooks, one edge per forward, on the trained demo model (tests/fidelity_cases.py) with IOI
prompts that differ late (position 10 of 15) and early (position 2), for a sample of
edges of every kind: input, head and MLP sources into a head's q, k and v, into an MLP
(same-layer heads included) and into the logits.

The reference (tests/circuits/edge_reference.py): the source's clean-minus-corrupted
write added to the residual the destination reads, the destination's output read off
that run and written into a fresh corrupted run, so that every other reader keeps the
corrupted residual; the metric of that run minus the corrupted run's, per pair.

Tolerance: 1e-4 of the spread of the reference's values, or 16 float32 ulps of the
logits, per destination kind, each spread asserted large (fidelity_cases.assert_close_rel).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import actstore
from actstore import patching as ap
from actstore.circuits.exact import exact_edge_scores
from actstore.circuits.graph import Graph
from actstore.errors import ConfigError, EngineCheckError, StoreMismatchError
from actstore.patching.path import Reader

from ..fidelity_cases import Case, assert_close_rel, demo_case
from ..patching.conftest import _one_thread  # noqa: F401  (one torch thread: the reference runs ~200 tiny forwards)
from .edge_reference import edge_by_hooks

KINDS = ("q", "k", "v", "mlp", "logits")
# the demo's IOI circuit: the edges that move the late case's logit difference most (2-18 units)
STRONG = ("m0->a2.h3<v>", "input->m0", "m3->logits", "a2.h3->m3", "a2.h3->logits")


def reference(case: Case, graph: Graph, edge: int, metric) -> torch.Tensor:
    return edge_by_hooks(
        case.bridge,
        case.corrupted,
        case.cache,
        case.corrupted_cache,
        case.corrupted_logits,
        graph,
        edge,
        metric,
    )


def sample_edges(graph: Graph, per_kind: int = 3, seed: int = 0) -> np.ndarray:
    """``per_kind`` random edges of every (source kind, destination kind), same-layer
    head -> MLP edges as a kind of their own, and the demo circuit's strong edges."""
    groups: dict[tuple[str, str], list[int]] = {}
    for e in range(graph.n_edges):
        u, d = graph.upstream[graph.src[e]], graph.downstream[graph.dst[e]]
        same = "same-layer" if d.kind == "mlp" and u.kind == "head" and u.layer == d.layer else ""
        groups.setdefault((u.kind + same, d.kind), []).append(e)
    assert len(groups) == 3 * 5 + 1, sorted(groups)  # every kind of edge exists
    rng = random.Random(seed)
    picked = {e for g in groups.values() for e in rng.sample(g, min(per_kind, len(g)))}
    return np.array(sorted(picked | set(graph.edge_index(STRONG).tolist())))


@pytest.fixture(scope="module")
def cases():
    """Per case: (case, graph, sampled edges, reference (edge, batch), metric)."""
    out = {}
    for kind in ("late", "early"):
        case = demo_case(kind)
        graph = Graph.from_model(case.bridge)
        edges = sample_edges(graph)
        metric = ap.LogitDiff(case.answer, case.wrong, per_example=True)
        ref = torch.stack([reference(case, graph, int(e), metric) for e in edges])
        out[kind] = (case, graph, edges, ref, metric)
    return out


def compare(
    got: torch.Tensor, want: torch.Tensor, case: Case, graph: Graph, edges: np.ndarray, what: str
) -> None:
    """Per destination kind, each spread asserted large."""
    kinds = np.array([graph.downstream[graph.dst[e]].kind for e in edges])
    for kind in KINDS:
        sel = torch.as_tensor(kinds == kind)
        assert_close_rel(
            got[sel], want[sel], min_spread=0.01, scale=case.logit_scale, what=f"{what} -> {kind}"
        )


@pytest.mark.parametrize("kind", ["late", "early"])
def test_edges_equal_single_edge_patches_with_hooks(cases, kind):
    case, graph, edges, ref, metric = cases[kind]
    got = exact_edge_scores(
        case.bridge,
        case.clean,
        case.corrupted,
        metric,
        graph=graph,
        edges=edges,
        per_pair=True,
        progress=False,
    )
    assert (
        got.shape == ref.shape == (len(edges), case.clean.shape[0]) and got.dtype == torch.float32
    )
    compare(got, ref, case, graph, edges, f"demo_{kind}")
    means = exact_edge_scores(
        case.bridge, case.clean, case.corrupted, metric, graph=graph, edges=edges, progress=False
    )
    assert means.shape == (len(edges),)
    torch.testing.assert_close(means, got.mean(-1), rtol=0, atol=1e-6)  # the mean over pairs


def test_a_plain_metric_and_a_small_memory_budget(cases, monkeypatch):
    """A plain per-pair metric (every logit computed), and a budget so small that the
    sources run in many groups (one engine sweep each) and the engine in many chunks:
    the same values."""
    from actstore.circuits import exact

    case, graph, edges, ref, _ = cases["late"]
    sweeps = []
    sweep = exact.edge_sweep
    monkeypatch.setattr(
        exact, "edge_sweep", lambda *a, **kw: sweeps.append(len(a[3])) or sweep(*a, **kw)
    )
    b, a, w = torch.arange(len(case.answer)), torch.tensor(case.answer), torch.tensor(case.wrong)
    got = exact_edge_scores(
        case.bridge,
        case.clean,
        case.corrupted,
        lambda logits: logits[b, -1, a] - logits[b, -1, w],
        edges=edges,
        per_pair=True,
        memory_budget=2**21,
        progress=False,
    )
    compare(got, ref, case, graph, edges, "plain metric, 2 MiB budget")
    # several groups per reader
    assert sum(sweeps) == len(edges) and len(sweeps) >= 2 * len(KINDS), sweeps


def test_every_edge_and_a_subset(cases):
    """All 479 edges of the demo at once; a subset (unordered, with a repeat) gives the same entries."""
    case, graph, edges, ref, metric = cases["late"]
    every = exact_edge_scores(case.bridge, case.clean, case.corrupted, metric, progress=False)
    assert every.shape == (graph.n_edges,) == (479,)
    compare(every[edges][:, None], ref.mean(-1, keepdim=True), case, graph, edges, "every edge")
    subset = np.array([edges[5], edges[0], edges[-1], edges[5]])
    got = exact_edge_scores(
        case.bridge, case.clean, case.corrupted, metric, edges=subset.tolist(), progress=False
    )
    torch.testing.assert_close(got, every[subset], rtol=0, atol=1e-5)
    top = graph.names[int(every.abs().argmax())]
    assert top in STRONG, top  # the demo's circuit
    empty = exact_edge_scores(
        case.bridge, case.clean, case.corrupted, metric, edges=[], progress=False
    )
    assert empty.shape == (0,)


def test_clean_from_a_store_or_a_cache(cases, tmp_path):
    from actstore.demo import data as demo_data

    case, graph, edges, ref, metric = cases["late"]
    texts = [p["clean"] for p in demo_data.ioi_pairs(4, template=0)]
    order = [2, 0, 3, 1]  # the store holds the prompts in another order
    store = actstore.cache(
        out=str(tmp_path / "clean.zarr"),
        model="actstore-demo",
        dataset=[texts[i] for i in order],
        packing="document",
        seq_len=case.clean.shape[1],
        sites="resid_pre:0,z:all,mlp_out:all",
        progress=False,
    )
    rows = [order.index(i) for i in range(4)]
    assert torch.equal(torch.as_tensor(store.tokens()[rows]).long(), case.clean)
    from_store = exact_edge_scores(
        case.bridge,
        None,
        case.corrupted,
        metric,
        edges=edges,
        clean_cache=store,
        clean_rows=rows,
        per_pair=True,
        progress=False,
    )
    compare(from_store, ref, case, graph, edges, "clean from a store")
    from_cache = exact_edge_scores(
        case.bridge,
        None,
        case.corrupted,
        metric,
        edges=edges,
        clean_cache=case.cache,
        per_pair=True,
        progress=False,
    )
    compare(from_cache, ref, case, graph, edges, "clean from an ActivationCache")
    partial = actstore.cache(
        out=str(tmp_path / "z.zarr"),
        model="actstore-demo",
        dataset=texts,
        packing="document",
        seq_len=case.clean.shape[1],
        sites="z:all",
        progress=False,
    )
    with pytest.raises(
        StoreMismatchError,
        match=r"no activations for blocks.0.hook_mlp_out, blocks.0.hook_resid_pre"
        r".*--sites z:all,mlp_out:all,resid_pre:0",
    ):
        exact_edge_scores(
            case.bridge, None, case.corrupted, metric, clean_cache=partial, progress=False
        )


def test_the_self_check_catches_wrong_mlp_values(cases, monkeypatch):
    """The engine's check replays its own values; the edge-value check recomputes them with hooks."""
    case, graph, _, _, metric = cases["late"]
    call = Reader.__call__

    def off(self, model, layer, x):  # an MLP 1% off, as a changed internal might give
        y = call(self, model, layer, x)
        return 1.01 * y if self.name == "mlp" else y

    monkeypatch.setattr(Reader, "__call__", off)
    with pytest.raises(
        EngineCheckError, match=r"the mlp input of layer \d with (input|a\d\.h\d|m\d)'s write added"
    ):
        exact_edge_scores(
            case.bridge,
            case.clean,
            case.corrupted,
            metric,
            edges=graph.edges_into(graph.downstream_index("m2")),
            progress=False,
        )


def test_bad_input_is_a_clear_error(cases):
    case, graph, _, _, metric = cases["late"]

    def run(**kw):
        return exact_edge_scores(
            case.bridge,
            kw.pop("clean", case.clean),
            case.corrupted,
            kw.pop("metric", metric),
            progress=False,
            **kw,
        )

    with pytest.raises(
        ConfigError, match=r"edge numbers \[479, -1\] are outside the graph \(edges 0..478"
    ):
        run(edges=[0, 479, -1])
    with pytest.raises(ConfigError, match="1-D sequence of integer edge numbers"):
        run(edges=[0.5, 1.0])
    with pytest.raises(
        ConfigError, match=r"the graph has 3 layers of 4 heads but the model 4 of 4"
    ):
        run(graph=Graph(3, 4))
    with pytest.raises(
        ConfigError, match=r"one value per prompt pair, shape \(4,\).*returned shape \(\)"
    ):
        run(metric=ap.LogitDiff(case.answer, case.wrong), edges=[0])
    with pytest.raises(ConfigError, match="differ in shape"):
        run(clean=case.clean[:, :-1])
    with pytest.raises(ConfigError, match="pass clean_tokens, or clean_cache"):
        run(clean=None)
