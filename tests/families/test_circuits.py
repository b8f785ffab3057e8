"""Circuit discovery on other families (actstore.circuits.forward_hooked): GPT-NeoX
(parallel blocks: an MLP reads no head of its own layer), and Llama, Qwen 2 and Mistral
built with one key/value head per head (grouped-query models are refused: the graph has
one k and v input per head). Checked against references written here with the model's
own hooks:

- the masked forward: every edge kept is the model's own forward, every edge cut to the
  other prompts' node outputs is the other prompts' forward;
- exact edge scores: every edge of the graph against a single-edge patch (the source's
  clean-minus-corrupted output added to the one input it feeds: a head's per-head q/k/v
  input, an MLP's input copy, the final residual: tests/circuits/edge_reference.py) within
  1e-4 of the spread;
- EAP: each checked edge's score is the derivative of that single-edge patch's metric
  along its delta (forward-mode, float64), within 1e-5 of the spread; EAP-IG with one
  step is EAP;
- `actstore circuit` runs end to end on Pythia's family.
Prompts are 16 tokens, twice Mistral's sliding window."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from actstore import patching as ap
from actstore.circuits.attribution import edge_attribution
from actstore.circuits.exact import exact_edge_scores
from actstore.circuits.forward import GraphForward
from actstore.circuits.forward_hooked import HookedGraphForward
from actstore.circuits.graph import Graph
from actstore.cli import main
from actstore.errors import ConfigError

from ..circuits.edge_reference import add_to_input, edge_by_input_hooks, node_output
from ..fidelity_cases import assert_close_rel, boot

FAMILIES = ["gpt_neox", "llama", "qwen2", "mistral"]


@pytest.fixture(scope="module")
def folder_of(tmp_path_factory):
    """The family's random model with one key/value head per head (std 0.2)."""
    from actstore.random_models import build_random_model

    made: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in made:
            extra = {} if family == "gpt_neox" else {"num_key_value_heads": 4}
            made[family] = str(
                build_random_model(
                    family,
                    tmp_path_factory.mktemp("mha") / family,
                    seed=2,
                    initializer_range=0.2,
                    **extra,
                )
            )
        return made[family]

    return get


def _pairs(family: str) -> tuple[torch.Tensor, torch.Tensor, ap.LogitDiff]:
    rng = random.Random(family)
    clean = torch.tensor([[50256] + rng.sample(range(300, 20000), 15) for _ in range(3)])
    corrupted = clean.clone()
    for row, first in enumerate((4, 9, 12)):
        corrupted[row, first:] = torch.tensor(rng.sample(range(300, 20000), 16 - first))
    answer, wrong = rng.sample(range(300, 20000), 3), rng.sample(range(300, 20000), 3)
    return clean, corrupted, ap.LogitDiff(answer, wrong, per_example=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_masked_forward_is_the_models_own(folder_of, family):
    bridge = boot(folder_of(family))
    fwd = GraphForward(bridge)
    assert isinstance(fwd, HookedGraphForward) and fwd.graph.parallel == (family == "gpt_neox")
    clean, corrupted, _ = _pairs(family)
    with torch.no_grad():
        own, other = bridge(clean), bridge(corrupted)
        kept = fwd.run(clean, torch.ones(1, fwd.graph.n_edges))[0]
        cut = fwd.run(clean, torch.zeros(1, fwd.graph.n_edges), fwd.node_outputs(corrupted))[0]
    scale = float(own.abs().max())
    assert_close_rel(kept, own, min_spread=1.0, scale=scale, what="every edge kept")
    assert_close_rel(
        cut, other, min_spread=1.0, scale=scale, what="every edge cut to the other prompts"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_exact_edges_equal_single_edge_patches(folder_of, family):
    bridge = boot(folder_of(family))
    graph = Graph.from_model(bridge)
    clean, corrupted, metric = _pairs(family)
    got = exact_edge_scores(bridge, clean, corrupted, metric, per_pair=True, progress=False)
    with torch.no_grad():
        _, cc = bridge.run_with_cache(clean)
        logits, kc = bridge.run_with_cache(corrupted)
    want = torch.stack(
        [
            edge_by_input_hooks(bridge, corrupted, cc, kc, logits, graph, e, metric)
            for e in range(graph.n_edges)
        ]
    )
    assert_close_rel(got, want, min_spread=0.5, what=f"{family} exact edges")


@pytest.mark.parametrize("family", ["gpt_neox", "mistral"])
def test_eap_is_the_derivative_of_each_edge_patch(folder_of, family):
    import torch.autograd.forward_ad as fwAD

    bridge = boot(folder_of(family), torch.float64)
    graph = Graph.from_model(bridge)
    clean, corrupted, metric = _pairs(family)
    eap = edge_attribution(bridge, clean, corrupted, metric, per_pair=True, progress=False)
    spread = float(eap.max() - eap.min())
    assert spread > 0.1
    with torch.no_grad():
        _, cc = bridge.run_with_cache(clean)
        _, kc = bridge.run_with_cache(corrupted)
    picked = [int(e) for e in torch.argsort(eap.abs().sum(1), descending=True)[:6]]
    picked += random.Random(0).sample(range(graph.n_edges), 6)
    for e in picked:
        u = int(graph.src[e])
        delta = node_output(bridge, graph, u, cc) - node_output(bridge, graph, u, kc)
        with torch.no_grad(), fwAD.dual_level():
            t = fwAD.make_dual(
                torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64)
            )
            want = fwAD.unpack_dual(
                metric(add_to_input(bridge, graph, e, corrupted, t * delta))
            ).tangent
        assert torch.allclose(eap[e], want, rtol=0, atol=1e-5 * spread), (
            family,
            graph.names[e],
            eap[e],
            want,
        )
    for method in ("eap-ig-inputs", "eap-ig-activations"):
        one_step = edge_attribution(
            bridge, clean, corrupted, metric, method=method, steps=1, per_pair=True, progress=False
        )
        assert torch.allclose(one_step, eap, rtol=0, atol=1e-9 * spread), method


def test_a_parallel_block_has_no_head_to_mlp_edge_of_its_own_layer(folder_of):
    graph = Graph.from_model(boot(folder_of("gpt_neox")))
    assert "a0.h1->m0" not in graph.names and "a0.h1->m1" in graph.names
    assert "a0.h1->m0" in Graph(graph.n_layers, graph.n_heads).names  # (sequential blocks)


@pytest.mark.parametrize(
    "family,why",
    [
        (
            "llama",
            r"in this llama model each key/value head is shared by 2 query heads \(n_key_value_heads=2, "
            r"n_heads=4\), a graph actstore does not have yet",
        ),
        (
            "gemma2",
            r"each attention and MLP output is normalised before it joins the residual, so a head.s write is not "
            r"z @ W_O",
        ),
    ],
)
def test_graphs_actstore_does_not_have_are_refused(family_model, family, why, tmp_path, capsys):
    with pytest.raises(ConfigError, match=why):
        GraphForward(boot(family_model(family)))
    out = tmp_path / "c.zarr"
    assert (
        main(
            [
                "circuit",
                "--model",
                family_model(family),
                "--task",
                "ioi",
                "--n-pairs",
                "2",
                "--method",
                "eap",
                "--top",
                "3",
                "--out",
                str(out),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        != 0
    )
    assert "use activation patching (actstore patch, every sweep)" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


def test_actstore_circuit_on_pythias_family(folder_of, tmp_path, capsys):
    import zarr

    out = tmp_path / "c.zarr"
    assert (
        main(
            [
                "circuit",
                "--model",
                folder_of("gpt_neox"),
                "--task",
                "ioi",
                "--n-pairs",
                "4",
                "--method",
                "eap,exact",
                "--top",
                "10",
                "--out",
                str(out),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    group = zarr.open_group(str(out), mode="r")
    eap, exact = (np.asarray(group[f"circuit/{m}/scores"]) for m in ("eap", "exact"))
    assert eap.shape == exact.shape == (Graph.from_model(boot(folder_of("gpt_neox"))).n_edges,)
    assert np.isfinite(exact).all() and exact.std() > 0 and np.corrcoef(eap, exact)[0, 1] > 0.5


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_replaced_node_outputs_reach_every_reader(folder_of, family):
    """``outputs`` (path patching's senders) replaces a node's output wherever it is read:
    the same as patching that head's z (or the MLP's output) with hooks."""
    bridge = boot(folder_of(family))
    fwd = GraphForward(bridge)
    clean, corrupted, _ = _pairs(family)
    with torch.no_grad():
        _, cc = bridge.run_with_cache(clean)

        def head_z(act, hook):
            act = act.clone()
            act[:, :, 1] = cc["blocks.0.attn.hook_z"][:, :, 1]
            return act

        want = bridge.run_with_hooks(
            corrupted,
            fwd_hooks=[
                ("blocks.0.attn.hook_z", head_z),
                ("blocks.1.hook_mlp_out", lambda act, hook: cc["blocks.1.hook_mlp_out"]),
            ],
        )
        outputs = {
            "a0.h1": cc["blocks.0.attn.hook_z"][:, :, 1] @ bridge.blocks[0].attn.W_O[1],
            "m1": cc["blocks.1.hook_mlp_out"],
        }
        got = fwd.run(corrupted, torch.ones(1, fwd.graph.n_edges), outputs=outputs)[0]
        unpatched = bridge(corrupted)
    assert_close_rel(
        got, want, min_spread=1.0, scale=float(want.abs().max()), what=f"{family} replaced outputs"
    )
    assert float((want - unpatched).abs().max()) > 0.1  # (the replacement changes the logits)
