"""The sums at the heart of the edge forward: each downstream input as its edges' masked
contributions, ``x[v, n] = sum_u mask[v, u, n] * diff[v, u]`` over the upstream nodes so far.

Written as one autograd function so that neither direction makes copies of the nodes'
outputs: the forward accumulates group by group into one buffer (``baddbmm_``), the
backward computes the mask's gradient (the edges' attribution scores) and the nodes'
gradients from the same group tensors, which the forward holds anyway. Autograd's own
version of this (a sum of einsums) allocated a (variant, batch, pos, inputs, d_model)
temporary per group and ran several times slower on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["edge_sum"]


class _EdgeSum(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, cols: Sequence[torch.Tensor], mask: torch.Tensor, *diffs: torch.Tensor
    ) -> torch.Tensor:
        n_var, n_in = mask.shape[0], cols[0].shape[1]
        rest = diffs[0].shape[2:]
        x = torch.zeros(
            n_var, n_in, diffs[0][0, 0].numel(), dtype=diffs[0].dtype, device=diffs[0].device
        )
        for c, d in zip(cols, diffs):
            x.baddbmm_(mask[:, c].transpose(1, 2), d.reshape(n_var, d.shape[1], -1))
        ctx.cols = cols
        ctx.save_for_backward(mask, *diffs)
        return x.unflatten(-1, rest)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        mask, *diffs = ctx.saved_tensors
        n_var = mask.shape[0]
        g = grad.reshape(n_var, grad.shape[1], -1)  # (V, n, rest)
        grad_mask = torch.zeros_like(mask) if ctx.needs_input_grad[1] else None
        grad_diffs = []
        for i, (c, d) in enumerate(zip(ctx.cols, diffs)):
            flat = d.reshape(n_var, d.shape[1], -1)  # (V, u, rest)
            if grad_mask is not None:
                grad_mask[:, c] += torch.bmm(flat, g.transpose(1, 2))  # (V, u, n)
            grad_diffs.append(
                torch.bmm(mask[:, c], g).view_as(d) if ctx.needs_input_grad[2 + i] else None
            )
        return (None, grad_mask, *grad_diffs)


def edge_sum(
    mask: torch.Tensor, groups: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """``sum over groups of einsum("vun,vu...->vn...", mask[:, cols], diff)``: groups are
    (cols (u, n) edge numbers of each source u into each input n, diff (variant, u, ...))."""
    cols = [c for c, _ in groups]
    return _EdgeSum.apply(cols, mask, *[d for _, d in groups])
