"""The masked edge forward (circuits/forward.py) against the model's own forward and against
single-edge cuts written with hooks, on the trained demo model (IOI pairs differing late and
early) and a wide random model; tolerances relative to the spread of the reference values."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from actstore.circuits.forward import GraphForward
from actstore.circuits.graph import Graph
from actstore.errors import ConfigError
from actstore.patching import self_check

from ..conftest import TL4
from ..fidelity_cases import assert_close_rel, demo_case, hooked_transformer, wide_case, wide_model


@pytest.fixture(scope="module", params=["demo_late", "demo_early", "wide_late"])
def case(request, tmp_path_factory):
    if request.param == "wide_late":
        return wide_case(wide_model(tmp_path_factory.mktemp("wide") / "wide"))
    return demo_case(request.param.removeprefix("demo_"))


@pytest.fixture(scope="module")
def fwd(case):
    return GraphForward(case.bridge)


def _ones(fwd, n=1):
    return torch.ones(n, fwd.graph.n_edges)


def test_all_edges_kept_is_the_models_forward(case, fwd):
    with torch.no_grad():
        got = fwd.run(case.corrupted, _ones(fwd))[0]
    assert_close_rel(
        got, case.corrupted_logits, min_spread=5.0, scale=case.logit_scale, what="all ones"
    )


def test_every_edge_cut_to_the_other_run_is_the_other_forward(case, fwd):
    with torch.no_grad():
        got = fwd.run(
            case.corrupted, torch.zeros(1, fwd.graph.n_edges), fwd.node_outputs(case.clean)
        )[0]
        last = fwd.run(
            case.corrupted,
            torch.zeros(1, fwd.graph.n_edges),
            fwd.node_outputs(case.clean),
            positions=[-1, 3],
        )[0]
    assert_close_rel(
        got, case.clean_logits, min_spread=5.0, scale=case.logit_scale, what="all zeros"
    )
    assert_close_rel(
        last,
        case.clean_logits[:, [-1, 3]],
        min_spread=5.0,
        scale=case.logit_scale,
        what="positions",
    )


def test_node_outputs_sum_to_the_final_residual(case, fwd):
    """Independent of the masked forward: the nodes' outputs plus every b_O are the residual
    entering ln_final, as the model's own cache has it."""
    outs = fwd.node_outputs(case.clean)
    with torch.no_grad():
        bias = sum(block.attn.b_O for block in case.bridge.blocks)
    last = case.bridge.cfg.n_layers - 1
    want = case.cache[f"blocks.{last}.hook_resid_post"]
    assert_close_rel(
        outs.sum(0) + bias, want, min_spread=1.0, scale=float(want.abs().max()), what="resid"
    )


def _cut_reference(model, tokens, patch_outputs, live_outputs, graph, edge):
    """Logits with one edge u->d cut (d reads u's patch value instead of its live one), by
    hooks on the model: the one reader's input shifted by patch_u - live_u, all else live."""
    d = graph.downstream[graph.dst[edge]]
    delta = patch_outputs[graph.src[edge]] - live_outputs[graph.src[edge]]
    seen = {}

    def keep(name):
        def fn(act, hook):
            seen[name] = act
            return act

        return fn

    if d.kind == "logits":
        hooks = [(f"blocks.{graph.n_layers - 1}.hook_resid_post", lambda act, hook: act + delta)]
    elif d.kind == "mlp":
        # the bridge's ln2 reads the residual on a branch of its own (HF's GPT2Block keeps the residual apart)
        hooks = [(f"blocks.{d.layer}.ln2.hook_in", lambda act, hook: act + delta)]
    else:
        attn = model.blocks[d.layer].attn
        w, b = {"q": (attn.W_Q, attn.b_Q), "k": (attn.W_K, attn.b_K), "v": (attn.W_V, attn.b_V)}[
            d.kind
        ]

        def shifted(act, hook):
            x = model.blocks[d.layer].ln1(seen["pre"] + delta)
            act = act.clone()
            act[:, :, d.head] = x @ w[d.head] + b[d.head]
            return act

        hooks = [
            (f"blocks.{d.layer}.hook_resid_pre", keep("pre")),
            (f"blocks.{d.layer}.attn.hook_{d.kind}", shifted),
        ]
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=hooks)


def test_single_edge_cuts_equal_hook_references(case, fwd):
    """One edge of every kind cut at a time (one variant each, batched): the input of its
    reader shifted by the patch, everything downstream recomputed."""
    g = fwd.graph
    L = g.n_layers - 1
    names = [
        "input->a0.h1<q>",
        "input->m0",
        f"a0.h2->a{L}.h0<k>",
        f"m0->a{L}.h3<v>",
        "a1.h1->m1",
        f"a{L}.h0->m{L}",
        f"m{L - 1}->logits",
        "input->logits",
        f"a{L}.h2->logits",
        "a0.h0->a1.h2<q>",
    ]
    edges = g.edge_index(names)
    mask = _ones(fwd, len(edges))
    mask[torch.arange(len(edges)), torch.as_tensor(edges)] = 0
    live, patch = fwd.node_outputs(case.corrupted), fwd.node_outputs(case.clean)
    with torch.no_grad():
        got = fwd.run(case.corrupted, mask, patch)
    want = torch.stack(
        [_cut_reference(case.bridge, case.corrupted, patch, live, g, e) for e in edges]
    )
    # what each cut changes: compare the changes (the shared corrupted logits would make any error look small)
    base = case.corrupted_logits[None]
    assert_close_rel(
        got - base, want - base, min_spread=0.5, scale=case.logit_scale, what="single edges"
    )


def test_gradient_in_the_mask_flows(case, fwd):
    mask = _ones(fwd).requires_grad_(True)
    fwd.run(case.corrupted, mask, fwd.node_outputs(case.clean))[0, :, -1].logsumexp(
        -1
    ).sum().backward()
    assert (
        mask.grad is not None
        and bool(mask.grad.abs().gt(0).any())
        and bool(torch.isfinite(mask.grad).all())
    )


def test_bad_inputs_are_refused(case, fwd):
    with pytest.raises(ConfigError, match="expected \\(variant, n_edges\\)"):
        fwd.run(case.clean, torch.ones(1, 5))
    with pytest.raises(ConfigError, match="pass patch=fwd.node_outputs"):
        fwd.run(case.clean, torch.zeros(1, fwd.graph.n_edges))
    with pytest.raises(ConfigError, match="no upstream node 'a99.h0'"):
        fwd.run(case.clean, _ones(fwd), outputs={"a99.h0": torch.zeros(1)})
    with pytest.raises(ConfigError, match="are not positions of"):
        fwd.run(case.clean, _ones(fwd), positions=[99])
    with pytest.raises(ConfigError, match="Graph.from_model"):
        GraphForward(case.bridge, Graph(1, 1))


def test_the_self_check_catches_a_changed_block(case, monkeypatch):
    """A block computed another way (here: attention without the 1/sqrt(d_head) scale) raises
    instead of scoring edges on a wrong forward."""
    f = GraphForward(case.bridge)
    monkeypatch.setattr(f, "d_head", 1)
    assert self_check.ENABLED
    with pytest.raises(self_check.EngineCheckError, match="through its edge graph"):
        f.run(case.clean, _ones(f))


@pytest.mark.skipif(
    importlib.util.find_spec("transformer_lens.HookedTransformer") is None or TL4,
    reason="HookedTransformer: TransformerLens 3.x",
)
def test_hooked_transformer(case):
    ht = hooked_transformer(case.bridge)
    f = GraphForward(ht)
    with torch.no_grad():
        got = f.run(case.corrupted, torch.zeros(1, f.graph.n_edges), f.node_outputs(case.clean))[0]
    assert_close_rel(
        got, case.clean_logits, min_spread=5.0, scale=case.logit_scale, what="HookedTransformer"
    )
