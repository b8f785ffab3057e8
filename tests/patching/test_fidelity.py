"""Fidelity: actstore.patching equals transformer_lens.patching on every sweep, on the
trained demo model and a wide random model, with prompts that differ late and early
(tests/fidelity_cases.py: cases, tolerance 1e-4 of the reference's spread, spreads
asserted large), both engine paths (a batched LogitDiff: logits only where it reads
them, the last block for the final position; a plain metric: every logit), with and
without the key/value prefix; and the engine's self-check fails loudly when the
mechanisms it relies on break.

The references run under ``torch.no_grad()``. It matters for one hook: on a
TransformerBridge ``blocks.L.hook_resid_mid`` is an alias of ``blocks.L.ln2.hook_in``,
the tensor the block also adds the MLP's output to. transformer_lens.patching's setters
write into the hooked tensor, so the patch reaches the residual stream (what
HookedTransformer's hook_resid_mid means), except with gradients enabled, where its
hook clones the activation first and the patch reaches the MLP's input only.
actstore patches the residual stream either way (test_resid_mid_is_the_residual_stream).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformer_lens import patching as tlp

from actstore import patching as ap
from actstore.errors import EngineCheckError
from actstore.patching import engine as _patch_engine
from actstore.patching import hand_run as _hand_run
from actstore.patching import kv_prefix as _kv_prefix
from actstore.patching import path as _path_engine
from actstore.patching import self_check as _self_check
from actstore.patching.table import SWEEPS

from ..conftest import TL4
from ..fidelity_cases import (
    Case,
    assert_matches,
    compared,
    demo_case,
    hooked_transformer,
    ours,
    reference,
    wide_case,
)
from ..helpers import no_prefix

# every sweep of the table (tests/patching/test_table.py: the table is transformer_lens.patching's list)
SINGLE = [name for name, row in SWEEPS.items() if row.kind == "single"]
EVERY = [name for name, row in SWEEPS.items() if row.kind == "stack"]
CASES = ["demo_late", "demo_early", "wide_late"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    return {}


@pytest.fixture(scope="module", params=CASES)
def case(request, cases, tmp_path_factory) -> Case:
    name = request.param
    if name not in cases:
        cases[name] = (
            wide_case(tmp_path_factory.mktemp("models") / "wide")
            if name == "wide_late"
            else demo_case(name.removeprefix("demo_"))
        )
    return cases[name]


@pytest.mark.parametrize("sweep", SINGLE + EVERY)
def test_every_sweep_equals_transformer_lens(case, sweep):
    got_ld, got_plain, want_ld, want_plain = compared(case, sweep, *ours(case, sweep))
    assert_matches(got_ld, want_ld, case, f"{sweep} LogitDiff")
    assert_matches(
        got_plain, want_plain, case, min_spread=case.min_spread / 4, what=f"{sweep} plain metric"
    )


@pytest.mark.parametrize(
    "sweep", ["resid_pre", "resid_mid", "attn_head_v_by_pos", "attn_head_pattern_by_pos"]
)
def test_without_the_kv_prefix_equals_transformer_lens(case, sweep):
    """kv_prefix=False, the workaround the self-check names, is exact as well."""
    got_ld, got_plain = ours(case, sweep, kv_prefix=False)
    want_ld, want_plain = reference(case, sweep)
    assert_matches(got_ld, want_ld, case, sweep)
    assert_matches(got_plain, want_plain, case, min_spread=case.min_spread / 4, what=sweep)


# --- resid_mid: the residual stream, as HookedTransformer means it ----------------------------------


def test_resid_mid_is_the_residual_stream(cases, tmp_path_factory):
    case = cases.get("demo_late") or cases.setdefault("demo_late", demo_case("late"))
    got = ap.get_act_patch_resid_mid(
        case.bridge, case.corrupted, case.cache, case.ld, progress=False
    )
    # by hand: the clean resid_mid written into the hooked tensor (it is also the block's residual)
    layer, pos = 1, case.first_change
    name = f"blocks.{layer}.hook_resid_mid"

    def write(act, hook):
        act[:, pos] = case.cache[name][:, pos]
        return act

    def branch_only(act, hook):  # a copy: reaches ln2 (the MLP's input) only
        act = act.clone()
        act[:, pos] = case.cache[name][:, pos]
        return act

    with torch.no_grad():
        residual = case.ld(case.bridge.run_with_hooks(case.corrupted, fwd_hooks=[(name, write)]))
        mlp_only = case.ld(
            case.bridge.run_with_hooks(case.corrupted, fwd_hooks=[(name, branch_only)])
        )
    assert abs(float(got[layer, pos] - residual)) < 1e-4
    assert abs(float(residual - mlp_only)) > 0.5  # the two meanings differ a lot here
    # transformer_lens.patching with gradients on clones: the MLP-input-only meaning
    with torch.enable_grad():
        tl_grad = tlp.get_act_patch_resid_mid(case.bridge, case.corrupted, case.cache, case.ld)
    assert abs(float(tl_grad[layer, pos] - mlp_only)) < 1e-4


@pytest.mark.skipif(
    importlib.util.find_spec("transformer_lens.HookedTransformer") is None or TL4,
    reason="HookedTransformer's reference: TransformerLens 3.x",
)
@pytest.mark.parametrize(
    "sweep",
    ["resid_pre", "resid_mid", "attn_out", "attn_head_out_by_pos", "attn_head_pattern_all_pos"],
)
def test_hooked_transformer_means_the_same(cases, sweep):
    """On TransformerLens 3.x: HookedTransformer, loaded with the demo model's weights,
    gives the same sweeps (its hooks are the meaning the bridge's names promise)."""
    case = cases.get("demo_late") or cases.setdefault("demo_late", demo_case("late"))
    ht = hooked_transformer(case.bridge)
    with torch.no_grad():
        _, ht_cache = ht.run_with_cache(case.clean)
        want = getattr(tlp, f"get_act_patch_{sweep}")(ht, case.corrupted, ht_cache, case.ld)
    got = getattr(ap, f"get_act_patch_{sweep}")(
        case.bridge, case.corrupted, case.cache, case.ld, progress=False
    )
    assert_matches(got, want, case, sweep)


# --- the self-check ----------------------------------------------------------------------------------


def test_self_check_catches_a_lost_prefix(cases, monkeypatch):
    """Keys and values of the earlier positions dropped (what transformers 5.24 did to
    the old engine): the sweep raises instead of returning wrong numbers; kv_prefix=False,
    the way round it named in the error, gives the reference's values."""
    case = cases.get("demo_late") or cases.setdefault("demo_late", demo_case("late"))
    monkeypatch.setattr(_hand_run, "attention_prefix", no_prefix)
    with pytest.raises(
        EngineCheckError,
        match=r"plain run_with_hooks.*transformers \d.*transformer-lens \d.*"
        r"kv_prefix=False",
    ):
        ap.get_act_patch_resid_pre(case.bridge, case.corrupted, case.cache, case.ld, progress=False)
    got = ap.get_act_patch_resid_pre(
        case.bridge, case.corrupted, case.cache, case.ld, progress=False, kv_prefix=False
    )
    assert_matches(got, reference(case, "resid_pre")[0], case, "resid_pre without the prefix")


def test_a_prefix_the_attention_ignores_is_an_error(cases, monkeypatch):
    """An attention that looks for its cache under another keyword (transformers 5.24
    renamed the block's) is caught as it happens, before any comparison."""
    case = cases.get("demo_late") or cases.setdefault("demo_late", demo_case("late"))
    monkeypatch.setattr(_kv_prefix, "_CACHE_KWARGS", ("a_keyword_no_attention_reads",))
    with pytest.raises(
        EngineCheckError, match=r"attention of layers \[.*\] ignored the earlier positions' keys"
    ):
        ap.get_act_patch_attn_head_out_by_pos(
            case.bridge, case.corrupted, case.cache, case.ld, progress=False
        )


def test_self_check_catches_a_wrong_resid_mid(cases, monkeypatch):
    """The old engine's resid_mid (the patch returned as a copy: the MLP's input only)."""
    case = cases.get("demo_late") or cases.setdefault("demo_late", demo_case("late"))
    run_chunk = _patch_engine._run_chunk

    def copy_not_write(*args):
        return run_chunk(*args[:-2], False, args[-1])

    monkeypatch.setattr(_patch_engine, "_run_chunk", copy_not_write)
    with pytest.raises(EngineCheckError, match="hook_resid_mid"):
        ap.get_act_patch_resid_mid(case.bridge, case.corrupted, case.cache, case.ld, progress=False)


def test_self_check_catches_wrong_edge_values(cases, monkeypatch):
    case = cases.get("demo_late") or cases.setdefault("demo_late", demo_case("late"))
    projections = _path_engine.block_projections

    def off(*args, **kw):  # a projection 1% off, as a changed internal might give
        return tuple(1.01 * t for t in projections(*args, **kw))

    monkeypatch.setattr(_path_engine, "block_projections", off)
    with pytest.raises(EngineCheckError, match=r"input of layer 1 with head \(0, 1\)"):
        ap.get_act_patch_direct_path(
            case.bridge, case.corrupted, case.cache, None, case.ld, 0, 1, verbose=False
        )


def test_the_check_runs_a_plain_forward_per_sweep(cases, monkeypatch):
    case = cases.get("demo_late") or cases.setdefault("demo_late", demo_case("late"))
    checked = []
    check = _self_check.check_variants
    monkeypatch.setattr(
        _self_check, "check_variants", lambda *a, **k: checked.append(a[2]) or check(*a, **k)
    )
    ap.get_act_patch_attn_head_out_by_pos(
        case.bridge, case.corrupted, case.cache, case.ld, progress=False
    )
    assert len(checked) == 1 and len(checked[0]) == 1


# --- half precision ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_sweeps_pass_their_self_check(dtype):
    """fp16 / bf16 (on CPU here; the GPU default): the self-check's tolerance admits the
    engine's rounding, and the values track the reference run in the same dtype."""
    case = demo_case("late", dtype)
    for sweep in ("resid_pre", "attn_head_out_by_pos"):
        got = getattr(ap, f"get_act_patch_{sweep}")(
            case.bridge, case.corrupted, case.cache, case.ld, progress=False
        )
        with torch.no_grad():
            want = getattr(tlp, f"get_act_patch_{sweep}")(
                case.bridge, case.corrupted, case.cache, case.ld
            )
        spread = float(want.max() - want.min())
        assert spread > 1.0
        assert float((got.float() - want.float()).abs().max()) < 0.02 * spread
