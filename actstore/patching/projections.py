"""A block's queries, keys or values computed apart from the rest of the block.

The patching engine needs a block's keys and values without running the block: the
last block's for the earlier positions when the metrics read the final position only,
and the check that doing so reproduces the corrupted run's own. Edge patching
(:mod:`actstore.patching.path`) needs a head's query, key or value input from a
residual with a source's write added. Both apply the block's ``ln1`` and the
attention's own projection to a residual; an attention laid out otherwise answers
None and its caller runs the whole block instead (or refuses).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..model_protocol import HookedModel

__all__ = ["block_projections", "block_kv"]


def block_projections(
    model: HookedModel, layer: int, x: torch.Tensor, names: Sequence[str] = ("k", "v")
) -> tuple[torch.Tensor, ...] | None:
    """The queries/keys/values (``names`` of "q", "k", "v") block ``layer`` computes
    from its input ``x`` (row, pos, d_model), each as (row, head, pos, d_head), without
    the rest of the block; None where the bridge's attention does not expose them this way."""
    block = model.blocks[layer]
    try:
        h = block.ln1(x)
        outs = [getattr(block.attn, n)(h) for n in names]
    except Exception:  # another attention layout: the caller runs the whole block instead
        return None
    d_head = int(model.cfg.d_head)
    if all(o.ndim == 3 and o.shape[-1] % d_head == 0 for o in outs):  # (row, pos, head * d_head)
        outs = [o.unflatten(-1, (-1, d_head)) for o in outs]
    if any(o.ndim != 4 for o in outs):
        return None
    return tuple(o.transpose(1, 2) for o in outs)


def block_kv(
    model: HookedModel, layer: int, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Keys and values block ``layer`` computes from its input (see block_projections)."""
    return block_projections(model, layer, x, ("k", "v"))  # type: ignore[return-value]
