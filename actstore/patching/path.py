"""Edge patching on the vectorised engine (see :mod:`actstore.patching.engine`): direct
path patching here, and every edge of :mod:`actstore.circuits` on the same mechanism.

An edge u -> d adds the upstream node u's clean-minus-corrupted residual write,
``delta``, to the residual that one downstream *reader* d reads, while every other
reader keeps the corrupted residual (``transformer_lens.patching.get_act_patch_direct_path``
does this for head -> head edges, one full forward per edge). Each reader turns that
residual into one hooked activation that nothing else reads, so, everything upstream of
its layer being the corrupted run, the edge patch is exactly a patch of that hook:

    reader    reads (layer L)             hook patched                   patched value
    q, k, v   blocks.L.hook_resid_pre     blocks.L.attn.hook_{q,k,v}     head h's proj(ln1(resid_pre + delta))
    mlp       blocks.L.hook_resid_mid     blocks.L.hook_mlp_out          mlp(ln2(resid_mid + delta))
    logits    blocks.L.hook_resid_post    the same (L the last layer)    resid_post + delta

:class:`EdgeValues` computes those values for every source into the readers of a layer
at once (one reader call for all sources, batched), and :func:`edge_sweep` hands the
edges to :func:`~actstore.patching.engine.run_sweep` as a sweep of that hook, so they
run many at a time from the reader's block on, over the positions the patch changes.
Where ``delta`` is zero (positions before the first one at which clean and corrupted
differ) the value is the corrupted run's own, bit for bit, and the engine skips them.
Direct paths on the families whose blocks the engine does not run by hand go through the
model's own per-head q/k/v input fork instead (:mod:`actstore.patching.forked_path`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..model_protocol import HookedModel
from ..models import bridge_dtype
from ..sites import hook_name
from . import self_check as _self_check
from .clean import CleanSource
from .engine import Sweep, check_model, run_sweep
from .forked_path import check_forked_direct_path, forked_edge_sweep, split_qkv_input
from .metrics import Metrics
from .projections import block_projections

__all__ = [
    "Reader",
    "READERS",
    "EdgeValues",
    "edge_setter",
    "edge_sweep",
    "check_edge_values",
    "capture",
    "direct_path_sweep",
    "split_qkv_input",
]

_COMPONENTS = ("q", "k", "v")


@dataclass(frozen=True)
class Reader:
    """One kind of downstream input: the residual it reads (a short site) and the hook
    whose value it makes of it (a short site), per layer."""

    name: str  # "q", "k", "v", "mlp" or "logits"
    reads: str  # e.g. resid_pre
    writes: str  # e.g. q

    def hook(self, layer: int) -> str:
        """The hook an edge into this reader patches."""
        return hook_name(self.writes, layer)

    def read_hook(self, layer: int) -> str:
        """The residual this reader reads."""
        return hook_name(self.reads, layer)

    def __call__(self, model: HookedModel, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The hook's value from the residual ``x`` (row, pos, d_model): (row, pos, ...) as the hook has it."""
        if self.name in _COMPONENTS:
            proj = block_projections(model, layer, x, (self.name,))
            if proj is None:
                raise ConfigError(
                    f"blocks.{layer}.attn does not expose its {self.name} projection as a GPT-2 bridge "
                    "does; edge patching needs a TransformerBridge of a GPT-2-family model (use "
                    "transformer_lens.patching.get_act_patch_direct_path for this one)."
                )
            return proj[0].transpose(1, 2)  # (row, pos, head, d_head)
        if self.name == "mlp":
            block = model.blocks[layer]
            y = block.mlp(block.ln2(x))
            return y[0] if isinstance(y, tuple) else y
        return x


READERS: Mapping[str, Reader] = {
    **{c: Reader(c, "resid_pre", c) for c in _COMPONENTS},
    "mlp": Reader("mlp", "resid_mid", "mlp_out"),
    "logits": Reader("logits", "resid_post", "resid_post"),
}


class EdgeValues(Mapping[str, torch.Tensor]):
    """Per reader layer L: the hook ``reader.hook(L)`` as each source's edge patch would
    make it, (batch, pos, source, ...); a source not in ``live[L]`` holds the corrupted
    value (never used). Computed on demand, one layer at a time (the last one kept).
    ``labels`` name the sources in error messages."""

    def __init__(
        self,
        model: HookedModel,
        reader: Reader,
        deltas: torch.Tensor,
        live: Mapping[int, Sequence[int]],
        base: Mapping[int, torch.Tensor],
        corrupted: Mapping[int, torch.Tensor],
        labels: Sequence[str] | None = None,
    ):
        self.model, self.reader, self.live = model, reader, live
        self.labels = (
            list(labels) if labels is not None else [f"source {i}" for i in range(len(deltas))]
        )
        self.deltas = deltas  # (source, batch, pos, d_model)
        # per layer: the residual read, the hook's value (batch, pos, ...)
        self.base, self.corrupted = (
            base,
            corrupted,
        )
        self._names = {reader.hook(layer): layer for layer in corrupted}
        self._last: tuple[str, torch.Tensor] | None = None

    def __getitem__(self, hook: str) -> torch.Tensor:
        if self._last is not None and self._last[0] == hook:
            return self._last[1]
        layer = self._names[hook]
        corr = self.corrupted[layer]  # (batch, pos, ...)
        ones = (1,) * (corr.ndim - 2)
        out = corr[:, :, None].repeat(1, 1, len(self.deltas), *ones)
        live = list(self.live.get(layer, ()))
        if live:
            delta = self.deltas[live]  # (live, batch, pos, d_model)
            n_live, batch, n_pos, d_model = delta.shape
            x = (self.base[layer][None] + delta).reshape(n_live * batch, n_pos, d_model)
            new = (
                self.reader(self.model, layer, x)
                .reshape(n_live, batch, n_pos, *corr.shape[2:])
                .movedim(0, 2)
            )
            # where a source's write does not change, the reader reads the corrupted residual: its own value exactly
            changed = (delta != 0).any(-1).movedim(0, 2).reshape(batch, n_pos, n_live, *ones)
            out[:, :, live] = torch.where(changed, new.to(corr.dtype), corr[:, :, None])
        self._last = (hook, out)
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def edge_setter(
    corrupted: torch.Tensor, index: Sequence[int], values: torch.Tensor
) -> torch.Tensor:
    """index = (reader layer, source number, *reader index: the head for q/k/v): the
    reader's patched value at every position."""
    _, src, *rest = index
    at: tuple[Any, ...] = (slice(None), slice(None), *rest)
    source: tuple[Any, ...] = (slice(None), slice(None), src, *rest)
    corrupted[at] = values[source]
    return corrupted


def edge_sweep(
    model: HookedModel,
    corrupted_tokens: torch.Tensor,
    values: EdgeValues,
    indices: list[list[int]],
    metrics: Metrics,
    memory_budget: int | None = None,
    progress: bool = True,
    kv_prefix: bool = True,
    bar: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every edge's metric values, (index, metric[, batch]), and the corrupted run's: the
    edges (indices of :func:`edge_setter`) run as one engine sweep of ``values``'s hook,
    and the values themselves checked against a plain run_with_hooks (:func:`check_edge_values`)."""
    batch, n_pos = (int(n) for n in corrupted_tokens.shape)
    sweep = Sweep(indices=indices, act_name=values.reader.hook, patch_setter=edge_setter)
    out, baseline = run_sweep(
        model,
        corrupted_tokens,
        CleanSource(values, model, n_pos, batch),
        metrics,
        sweep,
        memory_budget,
        progress,
        kv_prefix,
        bar=bar,
    )
    if _self_check.ENABLED and indices:
        check_edge_values(model, corrupted_tokens, values, kv_prefix)
    return out, baseline


def check_edge_values(
    model: HookedModel, tokens: torch.Tensor, values: EdgeValues, kv_prefix: bool
) -> None:
    """Recompute the edge values of one source (the largest write) into the first layer
    that reads it with a plain run_with_hooks: the source's write added to the residual
    the reader reads there, the reader's hook read off (the forward abandoned there); the
    engine's sweep of these values is checked by run_sweep itself. Raise
    EngineCheckError if they differ."""
    from ..models import CaptureDone

    first: dict[int, int] = {}  # source -> the first layer whose reader reads it
    for layer in sorted(values.live):
        for s in values.live[layer]:
            first.setdefault(s, layer)
    if not first:
        return
    s = max(first, key=lambda i: float(values.deltas[i].detach().abs().sum()))
    layer, reader = first[s], values.reader
    hook = reader.hook(layer)
    seen: dict[str, torch.Tensor] = {}

    def add(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return act + values.deltas[s].to(act.dtype)

    def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
        seen["act"] = act.detach().clone()
        raise CaptureDone

    with torch.no_grad():
        try:  # registered in this order, so on one hook point (logits) keep sees the sum
            model.run_with_hooks(tokens, fwd_hooks=[(reader.read_hook(layer), add), (hook, keep)])
        except CaptureDone:
            pass
        if "act" not in seen:
            raise _self_check.engine_error(
                f"self-check: {hook} did not fire in a plain run_with_hooks", kv_prefix
            )
        got, want = values[hook][:, :, s], seen["act"]
    tol = _self_check.tolerance(want, got, float(want.abs().max()), want.dtype)
    if not torch.allclose(got.double(), want.double(), rtol=0, atol=tol):
        raise _self_check.engine_error(
            f"computed the {reader.name} input of layer {layer} with {values.labels[s]}'s write added (to "
            f"{reader.read_hook(layer)}, read at {hook}) as differing by {float((got - want).abs().max()):.3g} "
            f"(tolerance {tol:.2g}) from a plain run_with_hooks",
            kv_prefix,
        )


def capture(
    model: HookedModel, tokens: torch.Tensor, names: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One plain run_with_hooks of ``tokens``: its logits and a copy of each named hook's
    activation, under the name asked for (a bridge's hook point may carry its canonical
    name, e.g. blocks.0.hook_in for blocks.0.hook_resid_pre)."""
    acts: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            acts[name] = act.detach().clone()
            return act

        return fn

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(n, keep(n)) for n in sorted(set(names))])
    return logits.detach(), acts


def direct_path_sweep(
    model: HookedModel,
    corrupted_tokens: torch.Tensor,
    clean_cache: Any,
    corrupted_cache: Any,
    metric: Callable[[torch.Tensor], torch.Tensor],
    sources: Sequence[tuple[int, int]],
    component: str,
    *,
    clean_rows: Any = None,
    memory_budget: int | None = None,
    progress: bool = True,
    kv_prefix: bool = True,
) -> torch.Tensor:
    """The metric with each edge (source head -> later head's ``component`` input)
    patched: (source, n_layers, n_heads), 0.0 where the destination layer is not after
    the source's (as the reference). ``corrupted_cache`` may be None (z of the
    corrupted run computed here)."""
    if component not in _COMPONENTS:
        raise ConfigError(
            f"component must be one of {_COMPONENTS} (the destination head's query, key or value "
            f"input), got {component!r}."
        )
    adapter = check_model(model, "Direct path patching")
    cfg = model.cfg
    n_layers, n_heads = int(cfg.n_layers), int(cfg.n_heads)
    bad = [s for s in sources if not (0 <= s[0] < n_layers and 0 <= s[1] < n_heads)]
    if bad:
        raise ConfigError(
            f"source head {bad[0]} is outside the model ({n_layers} layers of {n_heads} heads)."
        )
    hand_run = adapter.hand_run_blocks and hasattr(model, "blocks")
    if not hand_run:
        check_forked_direct_path(model, adapter, component)
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
    reader = READERS[component]

    # the corrupted run once: z of the source layers, resid_pre and the patched hook of the destinations
    names = (
        {name for layer in dst_layers for name in (reader.read_hook(layer), reader.hook(layer))}
        if hand_run
        else set()
    )
    if corrupted_cache is None:
        names |= {hook_name("z", s[0]) for s in sources}
    _, acts = capture(model, corrupted_tokens, sorted(names))
    with torch.no_grad():
        clean = CleanSource(clean_cache, model, n_pos, batch, clean_rows)
        corr_z = acts if corrupted_cache is None else corrupted_cache
        dtype = bridge_dtype(model)
        deltas = []
        for src_layer, src_head in sources:
            z_name = hook_name("z", src_layer)
            w_o = model.blocks[src_layer].attn.W_O[src_head]  # (d_head, d_model)
            zc = clean[z_name][:, :, src_head]
            zk = torch.as_tensor(corr_z[z_name]).to(device=device, dtype=dtype)[:, :, src_head]
            # as the reference: clean write minus corrupted write
            deltas.append(zc @ w_o - zk @ w_o)
    live = {
        layer: [s for s, (src_layer, _) in enumerate(sources) if src_layer < layer]
        for layer in dst_layers
    }
    indices = [
        [layer, s, head] for layer in dst_layers for s in live[layer] for head in range(n_heads)
    ]
    metrics = Metrics({"metric": metric}, False, batch, n_pos)
    if not hand_run:  # the reference's own fork, many edges at a time
        out = forked_edge_sweep(
            model,
            corrupted_tokens,
            torch.stack(deltas),
            indices,
            component,
            metrics,
            memory_budget,
            progress,
        )
    else:
        values = EdgeValues(
            model,
            reader,
            torch.stack(deltas),
            live,
            {layer: acts[reader.read_hook(layer)] for layer in dst_layers},
            {layer: acts[reader.hook(layer)] for layer in dst_layers},
            [f"head {s}" for s in sources],
        )
        out, _ = edge_sweep(
            model, corrupted_tokens, values, indices, metrics, memory_budget, progress, kv_prefix
        )
    for (layer, s, head), value in zip(indices, out[:, 0]):
        results[s, layer, head] = value
    return results
