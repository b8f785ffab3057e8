"""Direct path patching on the vectorised engine (see :mod:`actstore.patching.engine`).

``transformer_lens.patching.get_act_patch_direct_path`` patches one edge A -> B at a
time: A's clean-minus-corrupted residual write, ``delta = z_clean[:, :, A] @ W_O[A] -
z_corrupted[:, :, A] @ W_O[A]``, is added at every position to head B's own pre-``ln1``
copy of the residual (its Q, K or V input), while every other reader keeps the
corrupted residual; one full forward per edge.

B reads that input through ``ln1`` and its own projection only, so the edge patch is
exactly a patch of one head of ``blocks.L.attn.hook_{q,k,v}`` with the value
``proj_B(ln1(resid_pre_L + delta))``, everything upstream of layer L being the
corrupted run. This module computes those values for every source and destination
head of a layer at once (one ``ln1`` and projection per source, batched), and hands the
edges to :func:`~actstore.patching.engine.run_sweep` as a sweep of that hook, so they run
many at a time from the destination block on, over the positions the patch changes.
Where ``delta`` is zero (positions before the first one at which clean and corrupted
differ) the value is the corrupted run's own, bit for bit, and the engine skips them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterator, Sequence

import torch

from ..errors import ConfigError
from ..models import bridge_dtype
from ..sites import hook_name
from . import self_check as _self_check
from .clean import CleanSource
from .engine import Sweep, block_projections, check_model, run_sweep
from .metrics import Metrics

__all__ = ["direct_path_sweep"]

_COMPONENTS = ("q", "k", "v")


class _EdgeValues(Mapping[str, torch.Tensor]):
    """Per destination layer L: ``blocks.L.attn.hook_{component}`` as each source's
    edge patch would make it, (batch, pos, source, head, d_head); a source at or after
    L holds the corrupted values (never used). Computed on demand, one layer at a time."""

    def __init__(self, model: Any, component: str, sources: Sequence[tuple[int, int]], deltas: torch.Tensor,
                 resid_pre: Mapping[int, torch.Tensor], corrupted: Mapping[int, torch.Tensor]):
        self.model, self.component, self.sources = model, component, list(sources)
        self.deltas = deltas  # (source, batch, pos, d_model)
        self.resid_pre, self.corrupted = resid_pre, corrupted  # per layer: (batch, pos, d_model); hook values
        self._names = {hook_name(component, layer): layer for layer in corrupted}

    def __getitem__(self, hook: str) -> torch.Tensor:
        layer = self._names[hook]
        corr = self.corrupted[layer]  # (batch, pos, head, d_head)
        out = corr[:, :, None].repeat(1, 1, len(self.sources), 1, 1)
        live = [i for i, (src_layer, _) in enumerate(self.sources) if src_layer < layer]
        if not live:
            return out
        delta = self.deltas[live]  # (live, batch, pos, d_model)
        n_live, batch, n_pos, d_model = delta.shape
        x = (self.resid_pre[layer][None] + delta).reshape(n_live * batch, n_pos, d_model)
        proj = block_projections(self.model, layer, x, (self.component,))
        if proj is None:
            raise ConfigError(f"blocks.{layer}.attn does not expose its {self.component} projection as a GPT-2 "
                              "bridge does; use transformer_lens.patching.get_act_patch_direct_path for this model.")
        new = proj[0].transpose(1, 2).reshape(n_live, batch, n_pos, *corr.shape[2:]).movedim(0, 2)
        # where a source's write does not change, the head reads the corrupted residual: its own value exactly
        changed = (delta != 0).any(-1).movedim(0, 2)[..., None, None]  # (batch, pos, live, 1, 1)
        out[:, :, live] = torch.where(changed, new.to(corr.dtype), corr[:, :, None])
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def _edge_setter(corrupted: torch.Tensor, index: Sequence[int], values: torch.Tensor) -> torch.Tensor:
    """index = (dst layer, source number, dst head): that head's patched value at every position."""
    _, src, head = index
    corrupted[:, :, head] = values[:, :, src, head]
    return corrupted


def _check_edge_values(model: Any, tokens: torch.Tensor, values: _EdgeValues, sources: Sequence[tuple[int, int]],
                       component: str, kv_prefix: bool) -> None:
    """Recompute the edge values of one source (the largest write) into the next layer
    with a plain run_with_hooks: the source's write added to the residual entering that
    layer, its heads' ``component`` read off their hook (the forward abandoned there);
    the engine's sweep of these values is checked by run_sweep itself. Raise
    EngineCheckError if they differ."""
    from ..models import _CaptureDone

    n_layers = int(model.cfg.n_layers)
    live = [i for i, (src_layer, _) in enumerate(sources) if src_layer < n_layers - 1]
    if not live:
        return
    s = max(live, key=lambda i: float(values.deltas[i].detach().abs().sum()))
    layer = sources[s][0] + 1
    seen: dict[str, torch.Tensor] = {}

    def add(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return act + values.deltas[s].to(act.dtype)

    def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
        seen["act"] = act.detach().clone()
        raise _CaptureDone

    with torch.no_grad():
        try:
            model.run_with_hooks(tokens, fwd_hooks=[(hook_name("resid_pre", layer), add), (hook_name(component, layer), keep)])
        except _CaptureDone:
            pass
        if "act" not in seen:
            raise _self_check.engine_error(f"self-check: {hook_name(component, layer)} did not fire in a plain "
                                           "run_with_hooks", kv_prefix)
        got, want = values[hook_name(component, layer)][:, :, s], seen["act"]
    tol = _self_check.tolerance(want, got, float(want.abs().max()), want.dtype)
    if not torch.allclose(got.double(), want.double(), rtol=0, atol=tol):
        raise _self_check.engine_error(
            f"computed the {component} input of layer {layer} with head {sources[s]}'s write added as differing "
            f"by {float((got - want).abs().max()):.3g} (tolerance {tol:.2g}) from a plain run_with_hooks", kv_prefix)


def direct_path_sweep(model: Any, corrupted_tokens: torch.Tensor, clean_cache: Any, corrupted_cache: Any,
                      metric: Callable[[torch.Tensor], torch.Tensor], sources: Sequence[tuple[int, int]],
                      component: str, *, clean_rows: Any = None, memory_budget: int | None = None,
                      progress: bool = True, kv_prefix: bool = True) -> torch.Tensor:
    """The metric with each edge (source head -> later head's ``component`` input)
    patched: (source, n_layers, n_heads), 0.0 where the destination layer is not after
    the source's (as the reference). ``corrupted_cache`` may be None (z of the
    corrupted run computed here)."""
    if component not in _COMPONENTS:
        raise ConfigError(f"component must be one of {_COMPONENTS} (the destination head's query, key or value "
                          f"input), got {component!r}.")
    check_model(model)
    cfg = model.cfg
    n_layers, n_heads = int(cfg.n_layers), int(cfg.n_heads)
    bad = [s for s in sources if not (0 <= s[0] < n_layers and 0 <= s[1] < n_heads)]
    if bad:
        raise ConfigError(f"source head {bad[0]} is outside the model ({n_layers} layers of {n_heads} heads).")
    if corrupted_tokens.ndim == 1:
        corrupted_tokens = corrupted_tokens[None]
    device = torch.device(cfg.device)
    corrupted_tokens = corrupted_tokens.to(device)
    batch, n_pos = (int(n) for n in corrupted_tokens.shape)
    results = torch.zeros(len(sources), n_layers, n_heads, device=device)
    first = min((s[0] for s in sources), default=n_layers)
    if first >= n_layers - 1:
        return results
    dst_layers = range(first + 1, n_layers)
    src_layers = sorted({s[0] for s in sources})

    # the corrupted run once: z of the source layers, resid_pre and the patched hook of the destinations
    names = {name for layer in dst_layers for name in (hook_name("resid_pre", layer), hook_name(component, layer))}
    if corrupted_cache is None:
        names |= {hook_name("z", layer) for layer in src_layers}
    acts: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            acts[name] = act.detach().clone()
            return act
        return fn

    with torch.no_grad():
        model.run_with_hooks(corrupted_tokens, fwd_hooks=[(n, keep(n)) for n in sorted(names)])
        clean = CleanSource(clean_cache, model, n_pos, batch, clean_rows)
        corr_z = acts if corrupted_cache is None else corrupted_cache
        dtype = bridge_dtype(model)
        deltas = []
        for src_layer, src_head in sources:
            z_name = hook_name("z", src_layer)
            w_o = model.blocks[src_layer].attn.W_O[src_head]  # (d_head, d_model)
            zc = clean[z_name][:, :, src_head]
            zk = torch.as_tensor(corr_z[z_name]).to(device=device, dtype=dtype)[:, :, src_head]
            deltas.append(zc @ w_o - zk @ w_o)  # as the reference: clean write minus corrupted write
        values = _EdgeValues(model, component, sources, torch.stack(deltas),
                             {layer: acts[hook_name("resid_pre", layer)] for layer in dst_layers},
                             {layer: acts[hook_name(component, layer)] for layer in dst_layers})
    indices = [[layer, s, head] for layer in dst_layers for s, (src_layer, _) in enumerate(sources)
               if src_layer < layer for head in range(n_heads)]
    sweep = Sweep(indices=indices, act_name=lambda layer: hook_name(component, layer), patch_setter=_edge_setter)
    out, _ = run_sweep(model, corrupted_tokens, CleanSource(values, model, n_pos, batch),
                       Metrics({"metric": metric}, False, batch, n_pos), sweep, memory_budget, progress, kv_prefix)
    if _self_check.ENABLED:
        _check_edge_values(model, corrupted_tokens, values, sources, component, kv_prefix)
    for (layer, s, head), value in zip(indices, out[:, 0]):
        results[s, layer, head] = value
    return results
