"""Several sweeps stacked on a leading patch_type axis, as transformer_lens.patching's
``*_every`` helpers do.

A stack row of :mod:`actstore.patching.table` (``attn_head_all_pos_every``,
``attn_head_by_pos_every``, ``block_every``) names its parts; :func:`stack_sweeps` runs
them and stacks the results exactly as the reference does (the baseline computed once;
k/v of grouped-query attention zero-padded to n_heads; pattern by position moved to
(layer, pos, head)), and :func:`stacked_sweep` makes a row into its named function, for
exact patching (:mod:`actstore.patching.sweeps`) and attribution patching
(:mod:`actstore.patching.attribution`) alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Int
from transformer_lens import patching as _tl

from ..model_protocol import HookedModel
from .table import AXIS_RENAMES, SweepRow

__all__ = ["stack_sweeps", "stacked_sweep"]


def _to_stack_order(
    t: torch.Tensor, part: SweepRow, order: Sequence[str], n_heads: int
) -> torch.Tensor:
    """A part's tensor result with its axes in the stack's order, the head axis
    zero-padded to n_heads (k/v of grouped-query attention)."""
    names = [AXIS_RENAMES.get(a, a) for a in part.axes]
    t = t.permute(*(names.index(a) for a in order))
    if "head" in order and t.shape[order.index("head")] < n_heads:
        axis = order.index("head")
        pad = list(t.shape)
        pad[axis] = n_heads - t.shape[axis]
        t = torch.cat([t, t.new_zeros(pad)], dim=axis)
    return t


def stack_sweeps(
    row: SweepRow,
    parts: Sequence[Callable[..., Any]],
    model: HookedModel,
    corrupted_tokens: torch.Tensor,
    clean_cache: Any,
    metric: Any,
    kwargs: dict[str, Any],
) -> Any:
    """Run a stack row's parts (``parts``: their functions) and stack them on a leading
    patch_type axis, exactly as transformer_lens.patching's *_every helpers do (baseline
    computed once; k/v zero-padded to n_heads; pattern by position moved to (layer, pos, head))."""
    kwargs = dict(kwargs)
    baseline = bool(kwargs.pop("baseline", False))
    results = []
    for i, (sweep, part) in enumerate(zip(parts, row.parts)):
        out = sweep(
            model, corrupted_tokens, clean_cache, metric, baseline=baseline and i == 0, **kwargs
        )
        if baseline and isinstance(out, torch.Tensor):
            out = _tl._wrap_tensor_result(out, part.axes)
        results.append(out)
    n_heads = int(model.cfg.n_heads) if "head" in row.axes else 0
    if all(isinstance(r, torch.Tensor) for r in results):
        return torch.stack(
            [_to_stack_order(r, p, row.axes, n_heads) for r, p in zip(results, row.parts)], dim=0
        )
    return _tl._stack_patch_types(
        results, axis_order=row.axes, n_heads=n_heads, type_names=row.patch_types
    )


def stacked_sweep(
    row: SweepRow,
    parts: Callable[[HookedModel], Sequence[Callable[..., Any]]],
    doc: str,
    module: str,
) -> Callable[..., Any]:
    """The function of stack row ``row``, named ``row.function`` in ``module``: it runs
    the functions ``parts(model)`` gives (one per part of the row) through
    :func:`stack_sweeps`."""

    def sweep(
        model: HookedModel,
        corrupted_tokens: Int[torch.Tensor, "batch pos"],
        clean_cache: Any,
        metric: Any,
        **kwargs: Any,
    ) -> Any:
        return stack_sweeps(row, parts(model), model, corrupted_tokens, clean_cache, metric, kwargs)

    sweep.__name__ = sweep.__qualname__ = row.function
    sweep.__module__ = module
    sweep.__doc__ = doc
    return sweep
