"""Direct path patching (get_act_patch_direct_path and _all_sources) on the vectorised
engine equals single-edge patches written with hooks (on the trained demo model and a
wide random model: tests/fidelity_cases.py) and transformer_lens.patching's own
functions (TransformerLens 4; the sharp tiny model of test_patching, weights 10x GPT-2's
init), for every component (q, k, v), with a batched and a plain metric, from an
ActivationCache or a store.

Tolerance: 1e-4 of the spread of the reference's values, asserted large
(tests/fidelity_cases.py)."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching as tlp

import actstore
from actstore import patching as ap
from actstore.errors import ConfigError
from actstore.selftest_references import (
    edge_by_hooks,  # one edge patched by hand: the reference of direct path patching
)

from ..conftest import needs_tl4
from ..fidelity_cases import assert_close_rel, boot, demo_case, wide_case
from .test_patching import PAIRS, Setup


@pytest.fixture(scope="module")
def s(sharp_model, tokenizer) -> Setup:
    bridge = boot(sharp_model)
    setup = Setup(bridge, tokenizer)
    with torch.no_grad():
        _, setup.corrupted_cache = bridge.run_with_cache(setup.corrupted)
    return setup


def close(got, want, s, min_spread=0.05):
    assert got.dtype == want.dtype
    assert_close_rel(got, want, min_spread=min_spread, scale=s.logit_scale)


@pytest.mark.parametrize("which", ["demo_late", "wide_late"])
@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_edges_equal_single_edge_patches_with_hooks(which, component, tmp_path_factory):
    case = (
        demo_case("late")
        if which == "demo_late"
        else wide_case(tmp_path_factory.mktemp("m") / "wide")
    )
    # in the demo the sources whose edges move the IOI logit difference the most (0.1-0.4; most move it < 0.01)
    src = {"q": (2, 3), "k": (1, 0), "v": (1, 1)}[component] if which == "demo_late" else (0, 1)
    got = ap.get_act_patch_direct_path(
        case.bridge,
        case.corrupted,
        case.cache,
        case.corrupted_cache,
        case.ld,
        *src,
        component=component,
        verbose=False,
    )
    n_layers, n_heads = got.shape
    later = src[0] + 1
    want = torch.zeros_like(got)
    for dl in range(later, n_layers):
        for dh in range(n_heads):
            want[dl, dh] = edge_by_hooks(
                case.bridge,
                case.corrupted,
                case.cache,
                case.corrupted_cache,
                case.ld,
                src,
                (dl, dh),
                component,
            )
    assert_close_rel(
        got[later:],
        want[later:],
        min_spread=0.005,
        scale=case.logit_scale,
        what=f"{which} {component}",
    )
    assert (got[:later] == 0).all()


@needs_tl4
@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_all_sources_equal_transformer_lens(s, component):
    want = tlp.get_act_patch_direct_path_all_sources(
        s.bridge, s.corrupted, s.cache, s.corrupted_cache, s.ld, component=component, verbose=False
    )
    got = ap.get_act_patch_direct_path_all_sources(
        s.bridge, s.corrupted, s.cache, s.corrupted_cache, s.ld, component=component, verbose=False
    )
    close(got[:, :, 1:], want[:, :, 1:], s)
    n = s.bridge.cfg.n_layers
    later = torch.tensor([[dl > sl for dl in range(n)] for sl in range(n)])[
        :, None, :, None
    ].expand_as(want)
    assert (want[~later] == 0).all() and (
        got[~later] == 0
    ).all()  # placeholders where dst layer <= src layer
    moved = (want[later] - s.ld(s.corrupted_logits)).abs()
    assert (moved < 1e-6).sum() < moved.numel() // 2  # most edges change something


@needs_tl4
@pytest.mark.parametrize("component,src", [("q", (0, 1)), ("k", (1, 3)), ("v", (0, 2))])
def test_one_source_with_a_plain_metric(s, component, src):
    want = tlp.get_act_patch_direct_path(
        s.bridge,
        s.corrupted,
        s.cache,
        s.corrupted_cache,
        s.plain,
        *src,
        component=component,
        verbose=False,
    )
    got = ap.get_act_patch_direct_path(
        s.bridge,
        s.corrupted,
        s.cache,
        s.corrupted_cache,
        s.plain,
        *src,
        component=component,
        verbose=False,
    )
    close(got[src[0] + 1 :], want[src[0] + 1 :], s, min_spread=0.01)


@needs_tl4
def test_without_a_corrupted_cache_and_from_a_store(s, sharp_model, tmp_path):
    want = tlp.get_act_patch_direct_path(
        s.bridge, s.corrupted, s.cache, s.corrupted_cache, s.ld, 0, 3, component="k", verbose=False
    )
    close(
        ap.get_act_patch_direct_path(
            s.bridge, s.corrupted, s.cache, None, s.ld, 0, 3, component="k", verbose=False
        )[1:],
        want[1:],
        s,
        min_spread=0.01,
    )
    docs = [PAIRS[1][0], PAIRS[2][0], PAIRS[0][0]]
    store = actstore.cache(
        out=str(tmp_path / "z.zarr"),
        model=sharp_model,
        dataset=docs,
        packing="document",
        seq_len=8,
        sites="z:0",
        progress=False,
    )
    close(
        ap.get_act_patch_direct_path(
            s.bridge,
            s.corrupted,
            store,
            None,
            s.ld,
            0,
            3,
            component="k",
            verbose=False,
            clean_rows=[2, 0, 1],
        )[1:],
        want[1:],
        s,
        min_spread=0.01,
    )


def test_edges_run_batched_from_their_destination_layer(s, monkeypatch):
    """The 48 edges of the tiny model (16 into layer 1, 32 into layer 2) run as a few
    batched block calls from the destination block on, not as 48 full forwards (the
    self-check, off here, adds two plain forwards: tests/patching/test_fidelity.py)."""
    from actstore.patching import self_check as _self_check

    monkeypatch.setattr(_self_check, "ENABLED", False)
    calls: dict[int, list[int]] = {i: [] for i in range(3)}
    handles = [
        s.bridge.blocks[i].register_forward_pre_hook(
            lambda m, a, i=i: calls[i].append(a[0].shape[0])
        )
        for i in range(3)
    ]
    try:
        ap.get_act_patch_direct_path_all_sources(
            s.bridge, s.corrupted, s.cache, s.corrupted_cache, s.ld, verbose=False
        )
    finally:
        for h in handles:
            h.remove()
    batch = s.corrupted.shape[0]
    # after the two corrupted runs (ours and the engine's)
    patched = {i: c[2:] for i, c in calls.items()}
    assert calls[0] == [batch, batch] and patched[0] == []
    # every edge, once per block
    assert sum(patched[1]) == 16 * batch and sum(patched[2]) == (16 + 32) * batch
    assert sum(len(c) for c in patched.values()) <= 4


def test_bad_input_is_a_clear_error(s):
    with pytest.raises(ConfigError, match="component must be one of"):
        ap.get_act_patch_direct_path(
            s.bridge, s.corrupted, s.cache, None, s.ld, 0, 0, component="z", verbose=False
        )
    with pytest.raises(
        ConfigError, match=r"source head \(3, 0\) is outside the model \(3 layers of 4 heads\)"
    ):
        ap.get_act_patch_direct_path(
            s.bridge, s.corrupted, s.cache, None, s.ld, 3, 0, verbose=False
        )
    last = ap.get_act_patch_direct_path(
        s.bridge, s.corrupted, s.cache, None, s.ld, 2, 0, verbose=False
    )
    # no later layer: placeholders only, as the reference
    assert last.shape == (3, 4) and (last == 0).all()
