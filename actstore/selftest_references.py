"""References written with hooks, which the selftest and the tests compare actstore's
engines with: finite differences of an in-place patch (attribution patching's
reference, :func:`directional_derivative`) and one edge patched by hand (direct path
patching's, :func:`edge_by_hooks`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .model_protocol import HookedModel
from .sites import hook_name

__all__ = ["directional_derivative", "edge_by_hooks"]


def directional_derivative(
    bridge: HookedModel,
    corrupted: torch.Tensor,
    clean_cache: Any,
    metric: Callable[..., Any],
    name: str,
    setter: Callable[..., torch.Tensor],
    index: Sequence[int],
    eps: float = 1e-4,
) -> torch.Tensor:
    """The reference of attribution patching: d/dt of the metric with the activation at
    hook ``name`` moved by t x (setter(act, index, clean) - act), the change written into
    the hooked tensor as transformer_lens's setters write a patch, at t = 0 (central
    differences; use a float64 model)."""
    clean = clean_cache[name]

    def run(t: float) -> torch.Tensor:
        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            return act.add_(t * (setter(act.clone(), index, clean) - act))

        with torch.no_grad():
            return torch.as_tensor(metric(bridge.run_with_hooks(corrupted, fwd_hooks=[(name, fn)])))

    return (run(eps) - run(-eps)) / (2 * eps)


def edge_by_hooks(
    bridge: HookedModel,
    corrupted: torch.Tensor,
    clean_cache: Any,
    corrupted_cache: Any,
    metric: Any,
    src: tuple[int, int],
    dst: tuple[int, int],
    component: str,
) -> float:
    """One edge patched by hand, the reference of direct path patching: the source
    head's clean-minus-corrupted write added to the residual entering the destination
    layer, the destination head's ``component`` read off that run and written into the
    corrupted run (every other reader keeps the corrupted residual); the metric."""
    (sl, sh), (dl, dh) = src, dst
    z = hook_name("z", sl)
    w_o = bridge.blocks[sl].attn.W_O[sh]
    delta = clean_cache[z][:, :, sh] @ w_o - corrupted_cache[z][:, :, sh] @ w_o
    name = hook_name(component, dl)
    seen: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
        seen["act"] = act.clone()
        return act

    def write(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act[:, :, dh] = seen["act"][:, :, dh]
        return act

    with torch.no_grad():
        bridge.run_with_hooks(
            corrupted,
            fwd_hooks=[(hook_name("resid_pre", dl), lambda a, hook: a + delta), (name, keep)],
        )
        return float(metric(bridge.run_with_hooks(corrupted, fwd_hooks=[(name, write)])))
