"""One chunk of patched variants run by hand, block by block, over a window of positions.

Steps 3 and 4 of :mod:`actstore.patching.engine`, for the families whose blocks run
standalone (the adapter's ``hand_run_blocks``): the chunk's variants are stacked in the
batch dimension (variant-major: row ``v * batch + b``) and run from the patched block on,
starting from the corrupted residual, over positions ``[start, end)`` only, each
attention given the corrupted keys and values of the earlier positions as a prefix
(:mod:`actstore.patching.kv_prefix`); the patched window is substituted at the hook as
the reference's setter writes it. When the metrics read the final position only, the
last block runs for that position alone. Logits are then decoded only where the metrics
read them.
"""

from __future__ import annotations

from typing import Any

import torch

from ..families import adapter_for
from ..model_protocol import HookedModel
from ..sites import hook_name
from .corrupted import CorruptedRun
from .kv_prefix import PrefixKV, attention_prefix
from .metrics import Metrics
from .projections import block_kv

__all__ = ["run_chunk"]


def run_chunk(
    model: HookedModel,
    corrupted: CorruptedRun,
    metrics: Metrics,
    corrupted_sel: torch.Tensor,
    layer: int,
    hook: str,
    patched: list[torch.Tensor],
    start: int,
    end: int,
    q_axis: int | None,
    k_axis: int | None,
    n_layers: int,
    in_place: bool,
    kv_prefix: bool,
) -> torch.Tensor:
    """Run the variants of one chunk from block ``layer`` on, over positions
    [start, end); return their metric values (variant, metric[, batch]).
    ``in_place``: write the patched window into the hooked activation, as the
    reference's setters do, instead of returning it."""
    n_var = len(patched)
    window = torch.stack(patched)  # (variant, batch, ...)
    if q_axis is not None:
        window = window.narrow(q_axis + 1, start, end - start)
    if k_axis is not None:
        window = window.narrow(k_axis + 1, 0, end)
    window = window.reshape(-1, *window.shape[2:]).contiguous()  # (variant * batch, ...)
    fired = []

    def substitute(act: torch.Tensor, hook: Any) -> torch.Tensor:
        if act.shape != window.shape:
            raise RuntimeError(
                f"{hook}: activation of shape {tuple(act.shape)} where the engine expected "
                f"{tuple(window.shape)}; this model's blocks do not run as actstore.patching assumes."
            )
        fired.append(True)
        if in_place:
            return act.copy_(window)
        return window

    x = corrupted.acts[hook_name("resid_pre", layer)][:, start:end].repeat(n_var, 1, 1)
    prefix = PrefixKV(corrupted.keys, corrupted.values, start, n_var) if start > 0 else None
    # the last block for the final position only, when that is all the metrics read:
    # the other window positions there only give keys and values
    last = n_layers - 1
    trim = (
        kv_prefix
        and corrupted.last_kv_apart
        and layer < last
        and metrics.restricted
        and end - start > 1
        and [p for p in metrics.positions if p >= start] == [end - 1]
    )
    blocks = range(layer, last if trim else n_layers)
    with model.hooks(fwd_hooks=[(hook, substitute)]), attention_prefix(model, blocks, prefix):
        for i in blocks:
            y = model.blocks[i](x)
            x = y[0] if isinstance(y, tuple) else y
    if len(fired) != 1:
        raise RuntimeError(
            f"{hook} fired {len(fired)} times in the patched blocks (expected once)."
        )
    if trim:
        k, v = block_kv(model, last, x[:, :-1])  # type: ignore[misc]
        prefix = PrefixKV(corrupted.keys, corrupted.values, start, n_var)
        prefix.extra[last] = (k, v)
        with attention_prefix(model, [last], prefix):
            y = model.blocks[last](x[:, -1:])
        x, start = (y[0] if isinstance(y, tuple) else y), end - 1
    return metrics.evaluate(_logits(model, metrics, corrupted, corrupted_sel, x, start, end, n_var))


def _logits(
    model: HookedModel,
    metrics: Metrics,
    corrupted: CorruptedRun,
    corrupted_sel: torch.Tensor,
    x: torch.Tensor,
    start: int,
    end: int,
    n_var: int,
) -> torch.Tensor:
    """Logits of every variant row where the metrics read them; positions before
    ``start`` are the corrupted run's."""
    if not metrics.restricted:
        new = model.unembed(model.ln_final(x))  # (row, end - start, d_vocab)
        if start == 0:
            return new
        return torch.cat([corrupted.logits[:, :start].repeat(n_var, 1, 1), new], dim=1)
    out = corrupted_sel.repeat(n_var, 1, 1)  # (row, pos', vocab')
    cols = [i for i, p in enumerate(metrics.positions) if p >= start]
    if cols:
        resid = x[:, [metrics.positions[i] - start for i in cols]]
        out[:, cols] = adapter_for(model).logit_columns(model, resid, metrics.token_ids)
    return out
