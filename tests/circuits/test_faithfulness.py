"""Faithfulness against circuit runs written with hooks on the trained demo model: every
head's q, k and v input and every MLP's and the logits' input recomputed from the graph's
edges (live outputs of this forward where the circuit has the edge, the corrupted run's
elsewhere, plus the attention biases), with the Hugging Face weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from actstore.circuits.circuit import select_circuit
from actstore.circuits.graph import Graph

from ..fidelity_cases import assert_close_rel, demo_case


@pytest.fixture(scope="module")
def case():
    # 4 held-out IOI pairs; clean and corrupted differ at position 10 of 15
    return demo_case("late")


def _metric(case):
    b = torch.arange(len(case.answer))
    a, w = torch.tensor(case.answer), torch.tensor(case.wrong)
    return lambda logits: logits[b, -1, a] - logits[b, -1, w]  # (pair,)


def _head_out(model, layer: int, z: torch.Tensor) -> torch.Tensor:
    """(batch, pos, head, d_model): each head's z @ W_O, without the bias."""
    w = model.original_model.transformer.h[layer].attn.c_proj.weight  # (n_heads * d_head, d_model)
    n_heads = z.shape[2]
    return torch.einsum("bphd,hdm->bphm", z, w.reshape(n_heads, z.shape[3], -1))


def _ln(module, x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], module.weight, module.bias, eps)


def hooked_circuit_logits(
    model, graph: Graph, clean: torch.Tensor, corrupted: torch.Tensor, mask: np.ndarray
) -> torch.Tensor:
    """The circuit run of ``mask`` (edge,), one forward with hooks."""
    hf = model.original_model.transformer
    eps = model.original_model.config.layer_norm_epsilon
    L, H = graph.n_layers, graph.n_heads
    d_model = model.cfg.d_model

    def outputs(cache) -> dict[str, torch.Tensor]:
        out = {"input": cache["hook_embed"] + cache["hook_pos_embed"]}
        for layer in range(L):
            heads = _head_out(model, layer, cache[f"blocks.{layer}.attn.hook_z"])
            out.update({f"a{layer}.h{h}": heads[:, :, h] for h in range(H)})
            out[f"m{layer}"] = cache[f"blocks.{layer}.hook_mlp_out"]
        return out

    with torch.no_grad():
        corr = outputs(model.run_with_cache(corrupted)[1])
    live: dict[str, torch.Tensor] = {}
    b_o = [hf.h[layer].attn.c_proj.bias for layer in range(L)]

    def read(name: str, n_biases: int) -> torch.Tensor:
        """The input ``name`` of the graph: its edges' outputs, live or corrupted, plus biases."""
        j = graph.downstream_index(name)
        x = sum(b_o[:n_biases], torch.zeros(d_model))
        for e in graph.edges_into(j):
            u = graph.upstream[graph.src[e]].name
            x = x + (live[u] if mask[e] else corr[u])
        return x

    def keep(name):
        def fn(act, hook):
            live[name] = act

        return fn

    def embed(act, hook):
        live["input"] = live.pop("embed") + act

    def z_hook(layer):
        def fn(z, hook):
            heads = _head_out(model, layer, z)
            live.update({f"a{layer}.h{h}": heads[:, :, h] for h in range(H)})

        return fn

    def qkv(layer, which):
        def fn(act, hook):  # (batch, pos, head, d_head)
            attn = hf.h[layer].attn.c_attn
            new = act.clone()
            for h in range(H):
                x = _ln(hf.h[layer].ln_1, read(f"a{layer}.h{h}<{which}>", layer), eps)
                cols = slice(
                    "qkv".index(which) * d_model + h * act.shape[-1],
                    "qkv".index(which) * d_model + (h + 1) * act.shape[-1],
                )
                new[:, :, h] = x @ attn.weight[:, cols] + attn.bias[cols]
            return new

        return fn

    def mlp_in(layer):
        return lambda act, hook: _ln(hf.h[layer].ln_2, read(f"m{layer}", layer + 1), eps)

    hooks = [("hook_embed", keep("embed")), ("hook_pos_embed", embed)]
    for layer in range(L):
        hooks += [(f"blocks.{layer}.attn.hook_{w}", qkv(layer, w)) for w in "qkv"]
        hooks += [
            (f"blocks.{layer}.attn.hook_z", z_hook(layer)),
            (f"blocks.{layer}.ln2.hook_out", mlp_in(layer)),
            (f"blocks.{layer}.hook_mlp_out", keep(f"m{layer}")),
        ]
    hooks.append(("ln_final.hook_out", lambda act, hook: _ln(hf.ln_f, read("logits", L), eps)))
    with torch.no_grad():
        return model.run_with_hooks(clean, fwd_hooks=hooks)


def test_reference_full_and_empty(case):
    """The reference itself: every edge live is the clean forward, none the corrupted one."""
    g = Graph.from_model(case.bridge)
    full = hooked_circuit_logits(
        case.bridge, g, case.clean, case.corrupted, np.ones(g.n_edges, bool)
    )
    empty = hooked_circuit_logits(
        case.bridge, g, case.clean, case.corrupted, np.zeros(g.n_edges, bool)
    )
    spread = float(case.clean_logits.max() - case.clean_logits.min())
    torch.testing.assert_close(full, case.clean_logits, atol=1e-5 * spread, rtol=0)
    torch.testing.assert_close(empty, case.corrupted_logits, atol=1e-5 * spread, rtol=0)


def test_full_graph_is_one_and_empty_graph_zero(case):
    from actstore.circuits.faithfulness import faithfulness

    g = Graph.from_model(case.bridge)
    masks = np.stack([np.ones(g.n_edges, bool), np.zeros(g.n_edges, bool)])
    res = faithfulness(
        case.bridge, case.clean, case.corrupted, _metric(case), masks, progress=False
    )
    gap = np.abs(res.clean - res.corrupted)
    assert gap.min() > 1.0  # every pair's clean and corrupted logit differences are far apart
    np.testing.assert_allclose(res.per_pair, [[1.0] * 4, [0.0] * 4], atol=1e-5, rtol=0)
    np.testing.assert_allclose(res.mean, [1.0, 0.0], atol=1e-5, rtol=0)
    assert res.n_edges.tolist() == [g.n_edges, 0]


def test_circuits_equal_hooked_reference(case):
    """Mid-size circuits (top-n of scores that favour late layers, and random ones), one
    batched call, against one hooked forward per circuit."""
    from actstore.circuits.faithfulness import faithfulness, faithfulness_curve

    g = Graph.from_model(case.bridge)
    rng = np.random.default_rng(0)
    ends = np.array([g.upstream[s].kind == "input" for s in g.src]) + np.array(
        [g.downstream[d].kind == "logits" for d in g.dst]
    )
    # edges from the input and into the logits first: paths through
    scores = rng.random(g.n_edges) + ends
    sizes = [10, 40, 120, 300]
    curve = faithfulness_curve(
        case.bridge, case.clean, case.corrupted, _metric(case), scores, sizes, progress=False
    )
    masks = [select_circuit(g, scores, n).mask for n in sizes] + [
        rng.random(g.n_edges) < p for p in (0.3, 0.7)
    ]
    # one circuit a forward: the chunking too
    got = faithfulness(
        case.bridge,
        case.clean,
        case.corrupted,
        _metric(case),
        np.stack(masks),
        progress=False,
        memory_budget=1,
    )
    want = torch.stack(
        [
            _metric(case)(hooked_circuit_logits(case.bridge, g, case.clean, case.corrupted, m))
            for m in masks
        ]
    )
    spread = assert_close_rel(
        torch.as_tensor(got.metric),
        want.double(),
        min_spread=1.0,
        scale=case.logit_scale,
        what="circuit logit differences",
    )
    assert spread > 2.0
    assert_close_rel(
        torch.as_tensor(curve.metric),
        want[:4].double(),
        min_spread=1.0,
        scale=case.logit_scale,
        what="the curve's circuits",
    )
    assert (
        curve.sizes.tolist() == sizes
        and (0 < curve.n_edges).all()
        and (curve.n_edges <= np.array(sizes)).all()
    )
    assert np.ptp(curve.mean) > 0.2  # the circuits differ: a curve, not one value
