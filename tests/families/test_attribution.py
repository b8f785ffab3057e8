"""Attribution patching on every family, against forward-mode differentiation (a float64
model): each checked cell equals the directional derivative of the metric along
(patched - corrupted) at the corrupted run, computed by a forward pass with dual numbers
(torch.autograd.forward_ad) through a plain run_with_hooks, the patch written into the
hooked tensor as transformer_lens's setters write it; within 1e-5 of the sweep's spread.
(Finite differences cannot serve here: these families' RMSNorms compute in float32
even in a float64 model, so differences of small steps drown in float32 rounding.)
The batched LogitDiff decodes only the logits it reads, through the family's own final
norm and soft-capping (Gemma 2), which this catches if it is dropped."""

from __future__ import annotations

import pytest
import torch

from actstore import patching as ap
from actstore.patching import attribution as at
from actstore.random_models import FAMILIES
from actstore.sites import hook_name

from ..fidelity_cases import boot
from .test_patching import family_case

SWEEPS = [
    ("resid_pre", "resid_pre", ap.layer_pos_patch_setter),
    ("resid_mid", "resid_mid", ap.layer_pos_patch_setter),
    ("attn_head_out_by_pos", "z", ap.layer_pos_head_vector_patch_setter),
    ("attn_head_k_by_pos", "k", ap.layer_pos_head_vector_patch_setter),
    ("mlp_out", "mlp_out", ap.layer_pos_patch_setter),
]


def directional_derivative(bridge, corrupted, clean_cache, metric, name, setter, index) -> float:
    """d/dt metric(run with the activation at ``name`` moved by t x (setter(act) - act)) at
    t = 0, by forward-mode differentiation."""
    import torch.autograd.forward_ad as fwAD

    clean = clean_cache[name]

    def fn(act, hook):
        tangent = setter(act.clone(), index, clean) - act
        # into the hooked tensor, as a patch
        return act.copy_(fwAD.make_dual(act.detach().clone(), tangent))

    with torch.no_grad(), fwAD.dual_level():
        out = metric(bridge.run_with_hooks(corrupted, fwd_hooks=[(name, fn)]))
        return float(fwAD.unpack_dual(out).tangent)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gpt2"])
def test_attribution_equals_forward_mode_derivatives(family_model, family):
    case = family_case(family, family_model(family), "late")
    bridge = boot(family_model(family), torch.float64)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(case.clean)
    for sweep, act, setter in SWEEPS:
        if family == "gpt_neox" and act == "resid_mid":  # (none: a parallel block)
            continue
        got = getattr(at, f"get_act_patch_{sweep}")(
            bridge, case.corrupted, cache, case.ld, as_effect=True, progress=False
        )
        spread = float(got.max() - got.min())
        assert spread > 0.05, (family, sweep, spread)
        for flat in torch.argsort(got.abs().flatten(), descending=True)[:2].tolist():
            index = [int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(got.shape))]
            want = directional_derivative(
                bridge, case.corrupted, cache, case.ld, hook_name(act, index[0]), setter, index
            )
            assert abs(float(got[tuple(index)]) - want) <= 1e-5 * spread, (
                family,
                sweep,
                index,
                want,
            )
