"""The corrupted run of a sweep, done once: what every patched variant starts from.

Step 1 of :mod:`actstore.patching.engine`: one plain ``run_with_hooks`` of the corrupted
prompts (the reference's baseline, so the same logits bit for bit) that keeps a copy of
the swept activation at each patched layer and, for the models whose blocks the engine
runs by hand, the residual entering every block from the first patched one on with that
block's keys and values. It also notes whether the last block may run for the final
position alone, its keys and values for the other positions computed apart
(:mod:`actstore.patching.projections`), checked here against the run's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..model_protocol import HookedModel
from ..sites import hook_name
from .projections import block_kv

__all__ = ["CorruptedRun"]


class CorruptedRun:
    """The corrupted run, once: logits and what the patched runs start from."""

    def __init__(
        self,
        model: HookedModel,
        tokens: torch.Tensor,
        hooks: Sequence[str],
        first_layer: int,
        windowed: bool,
    ):
        n_layers = int(model.cfg.n_layers)
        self.acts: dict[str, torch.Tensor] = {}
        # (whole forwards need only the hooks)
        layers = range(first_layer, n_layers) if windowed else range(0)
        names = set(hooks) | {
            hook_name(short, layer) for layer in layers for short in ("resid_pre", "k", "v")
        }

        def keep(name: str) -> Callable[[torch.Tensor, Any], torch.Tensor]:
            # stored under the name asked for (the bridge's hook point may carry its
            # canonical name, e.g. blocks.0.hook_in for blocks.0.hook_resid_pre)
            def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
                self.acts[name] = act.detach().clone()
                return act

            return fn

        # a plain run_with_hooks, as the reference's baseline: the same logits, bit for bit
        self.logits = model.run_with_hooks(
            tokens, fwd_hooks=[(n, keep(n)) for n in sorted(names)]
        ).detach()
        self.keys = {layer: self.acts[hook_name("k", layer)].transpose(1, 2) for layer in layers}
        self.values = {layer: self.acts[hook_name("v", layer)].transpose(1, 2) for layer in layers}
        # may the last block run for the final position only? (its keys/values computed
        # apart, checked here against the corrupted run's own)
        last = n_layers - 1
        kv = block_kv(model, last, self.acts[hook_name("resid_pre", last)]) if windowed else None
        self.last_kv_apart = kv is not None and all(
            a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6)
            for a, b in zip(kv, (self.keys[last], self.values[last]))
        )
