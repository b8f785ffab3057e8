"""Edge attribution (EAP, EAP-IG) against independent references, on the trained demo model
(IOI pairs differing late: the subject's second mention; and early: the first name):

- float64 central differences of single-edge shifts written with hooks on the plain model
  (tests/circuits/attribution_reference.py): EAP, and EAP-IG-inputs at its interpolation points;
- TransformerLens's own edge attribution (tools.analysis.attribution_patching, per position,
  summed over positions);
- EAP-IG with one step is EAP exactly; EAP-IG-activations' scores sum to the metric's change
  from the corrupted to the clean run as the steps grow (the completeness of integrated
  gradients over the edge mask);
- clean node outputs from a run, an ActivationCache and a store agree; chunked pairs agree.

Tolerances are relative to the spread of the reference's values (tests/fidelity_cases.py),
which each comparison asserts is large.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import actstore
from actstore.circuits.attribution import edge_attribution
from actstore.circuits.clean import STORE_SITES, CleanNodes
from actstore.circuits.graph import Graph
from actstore.circuits.metrics import circuit_metric
from actstore.errors import ConfigError, StoreMismatchError

from ..conftest import TL4
from ..fidelity_cases import assert_close_rel, demo_case
from ..patching.conftest import _one_thread  # noqa: F401  (one thread a module: the machine is shared)
from .attribution_reference import edge_derivative, node_outputs, shifted_metric

FD_REL = 1e-6  # central differences in float64 at eps = 1e-4: truncation ~ eps^2, far below this


_CASES: dict = {}


def _case(kind: str, dtype: torch.dtype = torch.float64):
    if (kind, dtype) not in _CASES:
        _CASES[kind, dtype] = demo_case(kind, dtype)
    return _CASES[kind, dtype]


def _metric(case):
    return circuit_metric("logit-diff", answer=case.answer, wrong=case.wrong)


def _sample(graph: Graph, n: int = 48) -> np.ndarray:
    """Every edge into the logits and the last layer's MLP, and an even spread of the rest."""
    last = np.concatenate(
        [
            graph.edges_into(graph.downstream_index("logits")),
            graph.edges_into(graph.downstream_index(f"m{graph.n_layers - 1}")),
        ]
    )
    rest = np.setdiff1d(np.arange(graph.n_edges), last)
    return np.concatenate([last, rest[np.linspace(0, len(rest) - 1, n).astype(int)]])


def test_reference_shift_of_every_node_restores_the_clean_run():
    """The reference itself: the final residual shifted by every node's clean - corrupted
    output is the clean run's, so the metric is the clean run's."""
    c = _case("late")
    delta = node_outputs(c.bridge, c.clean) - node_outputs(c.bridge, c.corrupted)
    g = Graph.from_model(c.bridge)
    got = shifted_metric(c.bridge, c.corrupted, _metric(c), g.downstream[-1], delta.sum(0))
    torch.testing.assert_close(got, _metric(c)(c.clean_logits), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["late", "early"])
def test_eap_matches_finite_differences(kind):
    c = _case(kind)
    g, metric = Graph.from_model(c.bridge), _metric(c)
    got = edge_attribution(c.bridge, c.clean, c.corrupted, metric, per_pair=True, progress=False)
    assert got.shape == (g.n_edges, len(c.clean)) and got.dtype == torch.float64
    delta = node_outputs(c.bridge, c.clean) - node_outputs(c.bridge, c.corrupted)
    edges = _sample(g)
    want = torch.stack(
        [edge_derivative(c.bridge, c.corrupted, metric, g, int(e), delta) for e in edges]
    )
    assert_close_rel(got[edges], want, min_spread=0.5, what=f"EAP vs finite differences ({kind})")
    mean = edge_attribution(c.bridge, c.clean, c.corrupted, metric, progress=False)
    torch.testing.assert_close(mean, got.mean(1), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(
    not TL4,
    reason="TransformerLens 3.x's tools.analysis scores nodes only (granularity='edge' "
    "raises NotImplementedError there)",
)
def test_eap_matches_transformer_lens_edge_attribution():
    tl = pytest.importorskip("transformer_lens.tools.analysis.attribution_patching")
    c = _case("late", torch.float32)
    n = 2  # TransformerLens scores pair by pair, position by position
    a, w = c.answer[:n], c.wrong[:n]
    pair = {"i": 0}

    def one_pair(logits: torch.Tensor) -> torch.Tensor:  # its metric sees one pair's logits
        return logits[0, -1, a[pair["i"]]] - logits[0, -1, w[pair["i"]]]

    totals: dict[str, float] = {}
    for i in range(n):
        pair["i"] = i
        res = tl.attribution_patch(
            c.bridge,
            c.clean[i : i + 1],
            c.corrupted[i : i + 1],
            one_pair,
            tl.EdgeAttributionConfig(granularity="edge"),
        )
        for (u, d), score in res.edge_scores.items():
            name = f"{_tl_name(u)}->{_tl_name(d)}"
            totals[name] = totals.get(name, 0.0) + score / n
    g = Graph.from_model(c.bridge)
    assert set(totals) == set(g.names)
    want = torch.tensor([totals[name] for name in g.names], dtype=torch.float64)
    got = edge_attribution(
        c.bridge,
        c.clean[:n],
        c.corrupted[:n],
        circuit_metric("logit-diff", answer=a, wrong=w),
        progress=False,
    )
    assert_close_rel(got, want, min_spread=0.5, scale=c.logit_scale, what="EAP vs TransformerLens")


def _tl_name(node) -> str:
    kind = node.kind
    if kind == "embed":
        return "input"
    if kind == "attn_head_out":
        return f"a{node.layer}.h{node.head}"
    if kind in ("q_input", "k_input", "v_input"):
        return f"a{node.layer}.h{node.head}<{kind[0]}>"
    if kind in ("mlp_out", "mlp_in"):
        return f"m{node.layer}"
    return "logits"


@pytest.mark.parametrize("method", ["eap-ig-inputs", "eap-ig-activations"])
def test_ig_with_one_step_is_eap(method):
    c = _case("late")
    eap = edge_attribution(c.bridge, c.clean, c.corrupted, _metric(c), progress=False)
    ig = edge_attribution(
        c.bridge, c.clean, c.corrupted, _metric(c), method=method, steps=1, progress=False
    )
    assert torch.equal(ig, eap)


def test_ig_inputs_matches_finite_differences_at_its_points():
    """EAP-IG-inputs, 3 steps: the mean over t = 0, 1/3, 2/3 of (clean - corrupted output of
    u) . d metric / d input of d, on the run whose input embeddings are corrupted + t (clean
    - corrupted)."""
    c, steps = _case("early"), 3
    g, metric = Graph.from_model(c.bridge), _metric(c)
    got = edge_attribution(
        c.bridge, c.clean, c.corrupted, metric, method="eap-ig-inputs", steps=steps, progress=False
    )
    clean_nodes, corr_nodes = node_outputs(c.bridge, c.clean), node_outputs(c.bridge, c.corrupted)
    delta, edges = clean_nodes - corr_nodes, _sample(g, 24)
    want = torch.zeros(len(edges), dtype=torch.float64)
    for k in range(steps):
        embed = corr_nodes[0] + k / steps * delta[0]
        want += (
            torch.stack(
                [
                    edge_derivative(
                        c.bridge, c.corrupted, metric, g, int(e), delta, embed=embed
                    ).mean()
                    for e in edges
                ]
            )
            / steps
        )
    assert_close_rel(got[edges], want, min_spread=0.5, what="EAP-IG-inputs vs finite differences")


def test_ig_activations_scores_sum_to_the_metric_change():
    """Integrated gradients over the edge mask (1 = corrupted, 0 = every input reads the
    clean outputs: the clean run) are complete: the scores sum to metric(clean) -
    metric(corrupted), up to the left Riemann sum's error, which falls like 1 / steps."""
    c = _case("late")
    metric = _metric(c)
    gap = float((metric(c.clean_logits) - metric(c.corrupted_logits)).mean())
    errors = []
    for steps in (1, 4, 16, 64):
        s = edge_attribution(
            c.bridge,
            c.clean,
            c.corrupted,
            metric,
            method="eap-ig-activations",
            steps=steps,
            progress=False,
        )
        errors.append(abs(float(s.sum()) - gap))
    assert abs(gap) > 5
    assert all(e1 > 3 * e2 for e1, e2 in zip(errors[1:], errors[2:])), (gap, errors)  # ~1/steps
    assert errors[0] > errors[1] and errors[3] < 0.03 * abs(gap), (gap, errors)


def test_clean_outputs_from_a_run_a_cache_and_a_store_agree(tmp_path):
    c = _case("late", torch.float32)
    from actstore.demo import data as demo_data
    from actstore.demo import demo_model_dir

    texts = [p["clean"] for p in demo_data.ioi_pairs(4, template=0)]
    n_pos = c.clean.shape[1]
    store = actstore.cache(
        out=str(tmp_path / "clean.zarr"),
        model=str(demo_model_dir()),
        dataset=texts[::-1],
        packing="document",
        seq_len=n_pos,
        sites=STORE_SITES,
        progress=False,
    )
    rows = [3, 2, 1, 0]
    assert np.array_equal(store.tokens()[rows], c.clean.numpy())
    g = Graph.from_model(c.bridge)
    want = node_outputs(c.bridge, c.clean)
    for source, kw in [(c.clean, {}), (c.cache, {}), (store, {"clean_rows": rows})]:
        got = CleanNodes(c.bridge, source, g, n_pos, 4, **kw)(1, 3)
        torch.testing.assert_close(got, want[:, 1:3], rtol=1e-5, atol=1e-5)
    metric = _metric(c)
    run = edge_attribution(c.bridge, c.clean, c.corrupted, metric, progress=False)
    stored = edge_attribution(
        c.bridge, c.clean, c.corrupted, metric, clean_cache=store, clean_rows=rows, progress=False
    )
    assert_close_rel(stored, run, min_spread=0.5, scale=c.logit_scale, what="store vs run")
    partial = actstore.cache(
        out=str(tmp_path / "z.zarr"),
        model=str(demo_model_dir()),
        dataset=texts,
        packing="document",
        seq_len=n_pos,
        sites="z:all",
        progress=False,
    )
    with pytest.raises(StoreMismatchError, match="--sites z:all,mlp_out:all,resid_pre:0"):
        edge_attribution(
            c.bridge, c.clean, c.corrupted, metric, clean_cache=partial, progress=False
        )


def test_chunked_pairs_agree():
    c = _case("late")
    metric = _metric(c)
    whole = edge_attribution(
        c.bridge,
        c.clean,
        c.corrupted,
        metric,
        method="eap-ig-inputs",
        steps=2,
        per_pair=True,
        progress=False,
    )
    one = edge_attribution(
        c.bridge,
        c.clean,
        c.corrupted,
        metric,
        method="eap-ig-inputs",
        steps=2,
        per_pair=True,
        memory_budget=1,
        progress=False,
    )
    torch.testing.assert_close(one, whole, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="eap-ig"), "unknown method 'eap-ig'"),
        (dict(method="eap-ig-inputs", steps=0), "steps must be a positive"),
        (dict(graph=Graph(2, 2)), "the graph has 2 layers x 2 heads"),
    ],
)
def test_refusals(kwargs, match):
    c = _case("late", torch.float32)
    with pytest.raises(ConfigError, match=match):
        edge_attribution(c.bridge, c.clean, c.corrupted, _metric(c), progress=False, **kwargs)
    with pytest.raises(ConfigError, match="same shape"):
        edge_attribution(c.bridge, c.clean, c.corrupted[:, :-1], _metric(c), progress=False)
    with pytest.raises(
        ConfigError,
        match="clean_rows applies only when the clean activations are an ActivationStore",
    ):
        edge_attribution(
            c.bridge, c.clean, c.corrupted, _metric(c), clean_rows=[0, 1, 2, 3], progress=False
        )
    # chunks of one pair: refused up front
    with pytest.raises(ConfigError, match="give the function a `pairs` keyword"):
        edge_attribution(
            c.bridge,
            c.clean,
            c.corrupted,
            lambda logits: logits[:, -1, 0],
            memory_budget=1,
            progress=False,
        )


def test_equals_graph_forward_mask_gradients():
    """The residual form (one plain-sized forward) against GraphForward's own run, edge by
    edge: -d metric / d mask at a uniform mask 1 - t, patch = the clean node outputs."""
    from actstore.circuits.forward import GraphForward

    c = _case("early")
    metric, fwd = _metric(c), GraphForward(c.bridge)
    patch = fwd.node_outputs(c.clean)

    def mask_grad(t: float) -> torch.Tensor:
        mask = torch.full((1, fwd.graph.n_edges), 1 - t, dtype=torch.float64, requires_grad=True)
        return -torch.autograd.grad(metric(fwd.run(c.corrupted, mask, patch)[0]).sum(), mask)[0][
            0
        ] / len(c.clean)

    eap = edge_attribution(c.bridge, c.clean, c.corrupted, metric, progress=False)
    want = mask_grad(0.0)
    assert_close_rel(eap, want, min_spread=0.5, what="EAP vs GraphForward")
    ig = edge_attribution(
        c.bridge, c.clean, c.corrupted, metric, method="eap-ig-activations", steps=2, progress=False
    )
    assert_close_rel(
        ig, (want + mask_grad(0.5)) / 2, min_spread=0.5, what="EAP-IG-activations vs GraphForward"
    )


def test_a_user_metric_reading_every_logit_agrees():
    """A plain function (no declared positions: every position's logits are computed),
    chunked through its pairs keyword, gives the built-in metric's scores."""
    c = _case("late")
    a, w = torch.tensor(c.answer), torch.tensor(c.wrong)

    def ld(logits: torch.Tensor, pairs: slice = slice(None)) -> torch.Tensor:
        b = torch.arange(len(logits))
        return logits[b, -1, a[pairs]] - logits[b, -1, w[pairs]]

    want = edge_attribution(c.bridge, c.clean, c.corrupted, _metric(c), progress=False)
    got = edge_attribution(c.bridge, c.clean, c.corrupted, ld, memory_budget=1, progress=False)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
