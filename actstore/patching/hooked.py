"""Patched variants run the plain way: one ``run_with_hooks`` of the corrupted prompts,
repeated once per variant in the batch dimension (variant-major: row ``v * batch + b``),
each variant's own patch applied by the sweep's setter to its rows of the hooked
activation, exactly as ``transformer_lens.patching``'s hook applies it to one run.

Two users: the engine's self-check (:mod:`actstore.patching.self_check`), which
recomputes a few variants this way, and the engine itself on model families whose
blocks actstore does not run by hand (rotary positions, grouped-query attention,
sliding windows, soft-capping, parallel blocks): there every variant runs this way,
many at a time, relying on nothing but the model's hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..model_protocol import HookedModel
from .clean import CleanValues

__all__ = ["run_cells"]


def run_cells(
    model: HookedModel,
    tokens: torch.Tensor,
    cells: Sequence[int],
    index_of: Callable[[int], Sequence[int]],
    hook_of: Callable[[int], str],
    setter: Callable[..., torch.Tensor],
    clean: CleanValues,
    in_place: bool,
) -> tuple[torch.Tensor, list[str]]:
    """The logits (variant * batch, pos, vocab) of ``cells`` patched, one variant each,
    and the hooks that fired.

    ``setter(act, index, clean_act)`` patches the hooked activation of one variant's
    rows; ``in_place``: it writes into that activation (as transformer_lens.patching's
    setters do, which also changes any tensor the model aliases to it) rather than
    returning a new one. ``clean[hook]``: the clean run's activation."""
    batch = int(tokens.shape[0])
    by_hook: dict[str, list[tuple[int, Sequence[int]]]] = {}
    for i, c in enumerate(cells):
        by_hook.setdefault(hook_of(c), []).append((i, index_of(c)))
    fired: list[str] = []

    def patch(
        name: str, entries: list[tuple[int, Sequence[int]]]
    ) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        clean_act = clean[name]

        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            fired.append(name)
            out = act if in_place else act.clone()
            for i, index in entries:
                rows = out[i * batch : (i + 1) * batch]
                new = setter(rows if in_place else rows.clone(), index, clean_act)
                if new is not rows:
                    rows.copy_(new)
            return out

        return fn

    with torch.no_grad():
        logits = model.run_with_hooks(
            tokens.repeat(len(cells), 1),
            fwd_hooks=[(name, patch(name, entries)) for name, entries in by_hook.items()],
        )
    return logits, fired
