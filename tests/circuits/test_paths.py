"""Path patching (actstore.circuits.paths) equals the classic three-step recipe written
with hooks (tests/circuits/path_reference.py): direct (1-hop) paths into head q, k and v
inputs, MLPs and the logits, sender and receiver sets, 2-hop and 3-hop paths through
heads (or one of their inputs) and MLPs, with and without the direct paths; and the
direct path functions of actstore.patching (direct_path_sweep) and of
transformer_lens.patching (TransformerLens 4) are its special case of one sender head
and one receiver head's q, k or v input.

The model: the trained demo model on 4 held-out IOI pairs that differ late (position
10 of 15; tests/fidelity_cases.py), and a few sweeps on pairs that differ early (another
first name at position 2); base = the clean prompts, other = the corrupted ones, the
metric the IO - S logit difference (about 9 clean, -10 corrupted).
Tolerance: 1e-4 of the spread of the reference's values (or 16 float32 ulps of the
largest logit), each comparison asserting the spread is at least 0.02 and 100
tolerances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actstore import patching as ap
from actstore.circuits.forward import GraphForward
from actstore.circuits.graph import Graph
from actstore.circuits.path_variants import group_variants, plan_variants
from actstore.circuits.paths import Paths, path_mask, path_patch, path_patch_sweep
from actstore.errors import ConfigError
from actstore.patching.path import direct_path_sweep

from ..conftest import needs_tl4
from ..fidelity_cases import assert_close_rel, boot, demo_case
from ..patching.conftest import _one_thread  # noqa: F401  (one thread per module, as the patching tests)
from .path_reference import path_patch_by_hooks

NODES = ["input"] + [
    n for layer in range(4) for n in [f"a{layer}.h{h}" for h in range(4)] + [f"m{layer}"]
]


@pytest.fixture(scope="module")
def case():
    return demo_case("late")


def before(name: str, receiver: str) -> bool:
    """Does ``receiver`` (an input or node name) read node ``name``?"""
    if name == "input" or receiver == "logits":
        return True
    layer, dst = int(name[1]), int(receiver[1])
    return layer < dst or (receiver.startswith("m") and name.startswith("a") and layer == dst)


def reference(case, variants):
    caches = (case.cache, case.corrupted_cache)
    return torch.stack(
        [
            path_patch_by_hooks(
                case.bridge,
                case.clean,
                case.corrupted,
                case.ld,
                p.senders,
                p.receivers,
                p.through,
                p.direct,
                caches=caches,
            )
            for p in variants
        ]
    )


def check(case, variants, what="", **kwargs):
    got = path_patch_sweep(case.bridge, case.clean, case.corrupted, case.ld, variants, **kwargs)
    return assert_close_rel(
        got,
        reference(case, variants),
        min_spread=case.min_spread,
        scale=case.logit_scale,
        what=what,
    )


def test_the_reference_recipe(case):
    """Every node a sender, into the logits: the other run; nothing differs: the base run."""
    caches = (case.cache, case.corrupted_cache)
    every = path_patch_by_hooks(
        case.bridge, case.clean, case.corrupted, case.ld, NODES, ["logits"], caches=caches
    )
    torch.testing.assert_close(every, case.ld(case.corrupted_logits), rtol=0, atol=1e-4)
    same = path_patch_by_hooks(
        case.bridge, case.clean, case.clean, case.ld, ["a0.h1", "m1"], ["a2.h3"], ["m1"]
    )
    torch.testing.assert_close(same, case.ld(case.clean_logits), rtol=0, atol=1e-4)
    got = path_patch_sweep(
        case.bridge, case.clean, case.corrupted, case.ld, [Paths(NODES, "logits")]
    )
    torch.testing.assert_close(got[0], case.ld(case.corrupted_logits), rtol=0, atol=1e-4)


@pytest.mark.parametrize("receiver", ["a3.h1<q>", "a2.h3", "m2", "m3", "logits"])
def test_direct_paths_one_sender_each(case, receiver):
    """A sweep: every node before the receiver, one sender a variant, in one batched run."""
    check(case, [Paths(s, receiver) for s in NODES if before(s, receiver)], receiver)


@pytest.fixture(scope="module")
def early():
    return demo_case("early")


@pytest.mark.parametrize(
    "receiver,through", [("a1.h0<k>", ()), ("a2.h3", ()), ("logits", ("a2.h3",))]
)
def test_prompts_that_differ_early(early, receiver, through):
    """The same clean prompts, the other run with another first name at position 2."""
    node = (through or (receiver,))[0].split("<")[0]
    check(
        early, [Paths(s, receiver, through) for s in NODES if before(s, node)], f"early {receiver}"
    )


def test_sender_and_receiver_sets(case):
    variants = [
        Paths(["a0.h0", "a1.h1", "m0"], ["a2.h3<v>", "a3.h1<k>", "m3"]),
        Paths(["input", "a1.h1"], ["a2.h3", "logits"]),
        Paths(["m2", "a2.h0"], ["m3", "a3.h3<q>"]),
        Paths(["a1.h0", "a1.h2", "m1"], ["a2.h3<v>", "m2"]),
        Paths(["a1.h1", "m1"], ["a2.h0", "a2.h1", "a2.h2", "a2.h3", "m2"]),
    ]
    check(case, variants)


@pytest.mark.parametrize(
    "through,receiver,direct",
    [
        ("a2.h3", "logits", False),
        ("a2.h3<v>", "logits", False),
        ("a2.h3", "logits", True),
        ("m2", "logits", False),
        ("m1", "a2.h3<v>", False),
        ("a1.h1", "a2.h3<v>", False),
        ("a2.h3", "m3", False),
    ],
)
def test_two_hop_paths_one_sender_each(case, through, receiver, direct):
    """sender -> intermediate -> receiver (plus sender -> receiver with direct=True)."""
    node = through.split("<")[0]
    check(
        case,
        [Paths(s, receiver, through, direct) for s in NODES if before(s, node)],
        f"{through} {receiver}",
    )


def test_longer_paths(case):
    """Paths through several intermediates: every path whose inner nodes are all in ``through``."""
    variants = [Paths(s, "logits", ["a1.h1", "m1", "a2.h3"]) for s in NODES if before(s, "a1.h1")]
    variants += [
        Paths(s, "a3.h1<k>", ["m1", "a2.h3<v>", "m2"], direct=True)
        for s in NODES
        if before(s, "m1")
    ]
    check(case, variants)


def test_variants_that_cannot_share_a_forward(case):
    """m2 and m3 send in some variants and are downstream of a receiver in others: two
    forwards, the same values as one variant at a time; a memory budget of one row a
    forward, with a GraphForward passed in, too."""
    variants = [
        Paths("m0", "a2.h3<v>"),
        Paths("m2", "logits"),
        Paths("a1.h1", "a2.h3<v>"),
        Paths("m3", "logits"),
        Paths("input", "m3"),
    ]
    assert group_variants(plan_variants(Graph(4, 4), variants)) == [[0, 2, 4], [1, 3]]
    check(case, variants)
    one = torch.stack(
        [
            path_patch(case.bridge, case.clean, case.corrupted, case.ld, p.senders, p.receivers)
            for p in variants
        ]
    )
    small = path_patch_sweep(
        case.bridge,
        case.clean,
        case.corrupted,
        case.ld,
        variants,
        memory_budget=1,
        forward=GraphForward(case.bridge),
    )
    spread = float(one.max() - one.min())
    assert spread > 5
    torch.testing.assert_close(small, one, rtol=0, atol=1e-4 * spread)


def test_per_example_values(case):
    ld = ap.LogitDiff(case.answer, case.wrong, per_example=True)
    variants = [Paths(s, "a2.h3<v>") for s in NODES if before(s, "a2.h3")]
    got = path_patch_sweep(case.bridge, case.clean, case.corrupted, ld, variants, per_example=True)
    caches = (case.cache, case.corrupted_cache)
    want = torch.stack(
        [
            path_patch_by_hooks(
                case.bridge, case.clean, case.corrupted, ld, p.senders, p.receivers, caches=caches
            )
            for p in variants
        ]
    )
    assert got.shape == (len(variants), case.clean.shape[0])
    assert_close_rel(got, want, min_spread=case.min_spread, scale=case.logit_scale)


@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_direct_path_sweep_is_a_special_case(case, component):
    """direct_path_sweep patches source -> head's input into the corrupted run: path
    patching with base = corrupted, other = clean, one sender head, one receiver input."""
    # the demo's strongest sources, and weak ones
    sources = [
        (0, 0),
        (0, 3),
        (1, 0),
        (1, 1),
        (2, 3),
    ]
    want = direct_path_sweep(
        case.bridge,
        case.corrupted,
        case.cache,
        case.corrupted_cache,
        case.ld,
        sources,
        component,
        progress=False,
    )
    edges = [
        (i, dl, dh)
        for i, (sl, _) in enumerate(sources)
        for dl in range(sl + 1, 4)
        for dh in range(4)
    ]
    variants = [
        Paths(f"a{sources[i][0]}.h{sources[i][1]}", f"a{dl}.h{dh}<{component}>")
        for i, dl, dh in edges
    ]
    got = path_patch_sweep(case.bridge, case.corrupted, case.clean, case.ld, variants)
    ref = torch.stack([want[i, dl, dh] for i, dl, dh in edges])
    assert_close_rel(got, ref, min_spread=case.min_spread, scale=case.logit_scale, what=component)


@needs_tl4
@pytest.mark.parametrize("component,src", [("q", (0, 1)), ("k", (1, 3)), ("v", (0, 2))])
def test_transformer_lens_direct_path_is_a_special_case(sharp_model, tokenizer, component, src):
    from transformer_lens import patching as tlp

    from ..patching.test_patching import Setup

    s = Setup(boot(sharp_model), tokenizer)
    with torch.no_grad():
        _, corrupted_cache = s.bridge.run_with_cache(s.corrupted)
    want = tlp.get_act_patch_direct_path(
        s.bridge,
        s.corrupted,
        s.cache,
        corrupted_cache,
        s.plain,
        *src,
        component=component,
        verbose=False,
    )
    n_layers, n_heads = want.shape
    later = [(dl, dh) for dl in range(src[0] + 1, n_layers) for dh in range(n_heads)]
    got = path_patch_sweep(
        s.bridge,
        s.corrupted,
        s.clean,
        s.plain,
        [Paths(f"a{src[0]}.h{src[1]}", f"a{dl}.h{dh}<{component}>") for dl, dh in later],
    )
    assert_close_rel(
        got, torch.stack([want[dl, dh] for dl, dh in later]), min_spread=0.01, scale=s.logit_scale
    )


def test_the_mask_of_one_path():
    """a0.h0 -> a1.h0<q> in a 2-layer, 2-head graph: live are the path edge, and the edges
    out of the receiver head and its descendants (m1, recomputed as in step 3); every
    other edge reads the base run."""
    g = Graph(2, 2)
    one = Paths("a0.h0", "a1.h0<q>")
    live = {g.names[e] for e in np.flatnonzero(path_mask(g, one)[0])}
    assert live == {"a0.h0->a1.h0<q>", "a1.h0->m1", "a1.h0->logits", "m1->logits"}
    plan = plan_variants(g, [one])[0]
    assert plan.senders.tolist() == [1] and [g.upstream[u].name for u in plan.changed] == [
        "a1.h0",
        "m1",
    ]
    two = path_mask(g, [Paths("input", "logits", ["a0.h1<v>", "m0"])])
    live = {g.names[e] for e in np.flatnonzero(two[0])}
    assert live == {"input->a0.h1<v>", "input->m0", "a0.h1->m0", "a0.h1->logits", "m0->logits"}


@pytest.mark.parametrize(
    "paths,message",
    [
        (
            Paths("a0.h9", "logits"),
            r"sender 'a0.h9' is not a node of the graph; senders are 'input'",
        ),
        (Paths("logits", "m1"), r"sender 'logits' is not a node"),
        (Paths("a0.h1", "a2.h0<x>"), r"receiver 'a2.h0<x>' is not an input of the graph"),
        (Paths("a0.h1", "input"), r"receiver 'input' is not an input"),
        (Paths("a0.h1", "logits", "logits"), r"intermediate 'logits' is not an input"),
        (Paths("a2.h1", "a2.h0<q>"), r"receiver 'a2.h0<q>' reads no sender: it is not after them"),
        (
            Paths("m2", "a1.h0"),
            r"sender 'm2' is a receiver or computed from one; a sender must come before every",
        ),
        (Paths(["a0.h1", "a1.h1"], ["a1.h0<q>"]), r"sender 'a1.h1' is not before any receiver"),
        (Paths("a1.h0", ["a2.h0<q>", "a1.h1<k>"]), r"receiver 'a1.h1<k>' reads no sender"),
        (Paths("a0.h1", "a3.h0", "a0.h2"), r"intermediate 'a0.h2' is not after any sender"),
        (
            Paths("a0.h1", "a1.h0", "a2.h2"),
            r"intermediate 'a2.h2' is a receiver or computed from one",
        ),
        (Paths("a1.h1", "a2.h0", ["a1.h2", "m1"]), r"intermediate 'a1.h2' is not after any sender"),
        (Paths("a0.h1", "m2", "a0.h1"), r"'a0.h1' is both a sender and an intermediate"),
        (Paths("a0.h1", "m2", direct=False), r"direct=False leaves no path without intermediates"),
        (Paths([], "m2"), r"needs at least one sender and one receiver"),
    ],
)
def test_bad_variants_are_clear_errors(paths, message):
    with pytest.raises(ConfigError, match=message):
        path_mask(Graph(4, 4), [paths])


def test_bad_input_fails_before_work(case, monkeypatch):
    from actstore.circuits import forward

    def no_work(*args, **kwargs):
        raise AssertionError("ran a forward before validating")

    monkeypatch.setattr(forward.GraphForward, "node_outputs", no_work)
    with pytest.raises(ConfigError, match=r"variant 1: receiver 'a3.h1<z>' is not an input"):
        path_patch_sweep(
            case.bridge,
            case.clean,
            case.corrupted,
            case.ld,
            [Paths("m0", "m1"), Paths("m0", "a3.h1<z>")],
        )
    with pytest.raises(
        ConfigError,
        match=r"base_tokens \(4, 15\) and other_tokens \(4, 14\) must be token ids of the "
        "same shape",
    ):
        path_patch(case.bridge, case.clean, case.corrupted[:, 1:], case.ld, "m0", "m1")
    with pytest.raises(ConfigError, match="path patching needs at least one variant"):
        path_patch_sweep(case.bridge, case.clean, case.corrupted, case.ld, [])
    other_model = forward.GraphForward(demo_case("early").bridge)
    with pytest.raises(ConfigError, match="forward= is a GraphForward of another model"):
        path_patch(
            case.bridge, case.clean, case.corrupted, case.ld, "m0", "m1", forward=other_model
        )
