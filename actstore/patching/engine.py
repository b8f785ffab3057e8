"""The vectorised engine behind :mod:`actstore.patching`.

One sweep = one activation name, one patch setter and a table of patch indices
(first column: layer). The reference (``transformer_lens.patching``) runs one full
forward per index. Here, for each layer:

1. The corrupted run is done once (one forward with capture hooks): the residual
   entering every block, the swept activation at every layer, every block's keys and
   values, and the logits.
2. Each index's patched activation is ``patch_setter(corrupted_act, index, clean_act)``,
   exactly what the reference's hook computes (at the patched layer nothing upstream
   has changed, so the activation there *is* the corrupted one). Where it equals the
   corrupted activation the patch is a no-op and its value is the corrupted metric,
   without a forward. Otherwise the first position it changes, ``start``, is noted:
   positions before ``start`` are the corrupted run's in every later block (causal
   attention), so they are never recomputed.
3. Variants of one layer are batched in the batch dimension (variant-major: row
   ``v * batch + b``) and run from the patched block on, starting from the corrupted
   residual, over positions ``[start, end)`` only, with the corrupted keys/values of
   the earlier positions handed to each attention as a ready-made prefix; ``end`` is
   one past the last position any metric reads.
4. Logits are computed only where the metrics read them: for batched metrics that
   declare their positions and token ids, only those rows of the unembedding. When the
   metrics read the final position only, the last block runs for that position alone
   (the other positions there only contribute keys and values, computed apart).

Models: the steps above run blocks standalone (``bridge.blocks[i](residual)``), which
is exact for families with causal attention and absolute position embeddings added
before block 0 (the adapter's ``hand_run_blocks``: GPT-2). Every other family the
adapters serve (rotary positions, grouped-query attention, sliding windows,
soft-capping, parallel blocks) runs step 3 as whole plain forwards instead, still many
variants at a time and skipping no-op patches, each variant patched by the sweep's own
setter in its rows of the hooked activation (:mod:`actstore.patching.hooked`): the
reference's computation, batched, relying on nothing but the model's hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..families import adapter_for
from ..model_protocol import HookedModel
from ..sites import hook_name, layer_of
from . import self_check
from .checks import check_hand_run, check_model
from .chunks import CALL_COST_ROWPOS, default_memory_budget, variant_row_bytes
from .chunks import plan_chunks as _plan_chunks
from .clean import CleanValues
from .hooked import run_cells
from .kv_prefix import PrefixKV, attention_prefix
from .metrics import Metrics

__all__ = [
    "Sweep",
    "run_sweep",
    "default_memory_budget",
    "block_projections",
    "check_model",
    "check_hand_run",
    "variant_row_bytes",
]

_PATTERN_HOOKS = ("hook_pattern", "hook_attn_scores")  # (batch, head, query_pos, key_pos)
# --- the sweep -------------------------------------------------------------------------


@dataclass
class Sweep:
    """What to patch: ``patch_setter(corrupted_act, index, clean_act)`` at hook
    ``act_name(index[0])`` for each index (a list of ints, layer first)."""

    indices: list[list[int]]
    act_name: Callable[[int], str]
    patch_setter: Callable[[torch.Tensor, Sequence[int], torch.Tensor], torch.Tensor]


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


def _block_kv(
    model: HookedModel, layer: int, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Keys and values block ``layer`` computes from its input (see block_projections)."""
    return block_projections(model, layer, x, ("k", "v"))  # type: ignore[return-value]


class _Corrupted:
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
        kv = _block_kv(model, last, self.acts[hook_name("resid_pre", last)]) if windowed else None
        self.last_kv_apart = kv is not None and all(
            a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6)
            for a, b in zip(kv, (self.keys[last], self.values[last]))
        )


def _layer(hook: str) -> int:
    layer = layer_of(hook)
    if layer is None:
        raise ConfigError(
            f"Hook {hook} is outside the transformer blocks; actstore.patching patches hooks of "
            "blocks.L (resid_pre/mid, attn_out, mlp_out, z, q, k, v, pattern, ...). Use "
            "transformer_lens.patching for this one."
        )
    return layer


def _pos_axes(hook: str, act: torch.Tensor, n_pos: int) -> tuple[int | None, int | None]:
    """(query position axis, key position axis) of one row's activation (batch first)."""
    if hook.endswith(_PATTERN_HOOKS):
        return 2, 3
    if act.ndim >= 2 and act.shape[1] == n_pos:
        return 1, None
    return None, None  # no position axis we know of: never narrowed


def _first_change(
    patched: torch.Tensor, corrupted: torch.Tensor, pos_axis: int | None
) -> int | None:
    """First position where the patch changes anything; None for a no-op patch."""
    diff = patched != corrupted
    if not bool(diff.any()):
        return None
    if pos_axis is None:
        return 0
    per_pos = diff.movedim(pos_axis, 0).reshape(diff.shape[pos_axis], -1).any(dim=1)  # (pos,)
    return int(torch.nonzero(per_pos)[0, 0])


def run_sweep(
    model: HookedModel,
    corrupted_tokens: torch.Tensor,
    clean: CleanValues,
    metrics: Metrics,
    sweep: Sweep,
    memory_budget: int | None = None,
    progress: bool = True,
    kv_prefix: bool = True,
    bar: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every variant's metric values, (index, metric[, batch]), and the unpatched
    corrupted run's, (metric[, batch]); float32 on the model's device.

    ``kv_prefix=False`` runs every variant over all positions (from its patched block
    on), handing no earlier keys or values to the attentions. Either way, a few
    variants are recomputed with a plain run_with_hooks before anything is returned
    (:mod:`actstore.patching.self_check`). ``bar``: a tqdm bar of a larger job to advance
    by one per index (instead of drawing one of its own)."""
    from tqdm.auto import tqdm

    with torch.no_grad():
        run = _SweepRun(model, corrupted_tokens, clean, metrics, sweep, memory_budget, kv_prefix)
        own_bar = bar is None
        if own_bar:
            bar = tqdm(
                total=len(sweep.indices),
                desc=f"patching {sweep.act_name(0).split('.', 2)[-1]}",
                disable=not progress,
                leave=False,
            )
        for layer in sorted(run.by_layer):
            run.patch_layer(layer, bar)
        if own_bar:
            bar.close()
        run.self_check()
    return run.out, run.baseline


class _SweepRun:
    """One sweep of :func:`run_sweep`: the corrupted run, done once, the sweep's cells by
    layer, and the results filled in layer by layer (``out``, (index, metric[, batch]))."""

    def __init__(
        self,
        model: HookedModel,
        corrupted_tokens: torch.Tensor,
        clean: CleanValues,
        metrics: Metrics,
        sweep: Sweep,
        memory_budget: int | None,
        kv_prefix: bool,
    ):
        adapter = check_model(model)
        self.model, self.corrupted_tokens, self.clean, self.metrics, self.sweep = (
            model,
            corrupted_tokens,
            clean,
            metrics,
            sweep,
        )
        self.kv_prefix = kv_prefix
        # else: whole plain forwards
        self.windowed_model = adapter.hand_run_blocks and hasattr(model, "blocks")
        self.device = torch.device(model.cfg.device)
        self.batch, self.n_pos = corrupted_tokens.shape
        self.by_layer: dict[
            int, list[int]
        ] = {}  # layer -> the cells (rows of sweep.indices) patching it
        for c, index in enumerate(sweep.indices):
            self.by_layer.setdefault(_layer(sweep.act_name(int(index[0]))), []).append(c)
        self.hooks = {
            layer: sweep.act_name(int(sweep.indices[cells[0]][0]))
            for layer, cells in self.by_layer.items()
        }
        self.out = torch.zeros(
            (len(sweep.indices), len(metrics.fns)) + ((self.batch,) if metrics.per_example else ()),
            device=self.device,
        )
        self.corrupted = _Corrupted(
            model,
            corrupted_tokens,
            list(self.hooks.values()),
            min(self.by_layer, default=0),
            self.windowed_model,
        )
        self.corrupted_sel = metrics.select(self.corrupted.logits)  # (batch, pos', vocab')
        self.baseline = metrics.evaluate(self.corrupted_sel)[0]
        self.budget = memory_budget or default_memory_budget(self.device)
        self.end = metrics.end
        self.in_place: dict[
            int, bool
        ] = {}  # per layer: does the setter write into the activation it is given?
        self.all_live: list[
            tuple[int, int]
        ] = []  # (start, cell) of every cell that needed a forward

    def _patched(
        self, layer: int, c: int, corr_act: torch.Tensor, clean_act: torch.Tensor
    ) -> torch.Tensor:
        """Cell ``c``'s patched activation: the sweep's setter on a copy of the corrupted one."""
        given = corr_act.clone()
        new = self.sweep.patch_setter(given, self.sweep.indices[c], clean_act)
        # the reference's hook returns what the setter returns: the hooked tensor itself
        # when the setter writes into it (transformer_lens's do), which then also changes
        # any tensor the model aliases to it (the bridge's hook_resid_mid is ln2's input,
        # the very tensor the block adds the MLP's output to)
        self.in_place.setdefault(layer, new is given)
        return new

    def patch_layer(self, layer: int, bar: Any) -> None:
        """Every cell of ``layer``: a no-op patch (or one after every position read) gets
        the corrupted values; the others run, sorted by the first position they change, in
        the chunks of variants :func:`_plan_chunks` picks."""
        hook, cells = self.hooks[layer], self.by_layer[layer]
        corr_act, clean_act = self.corrupted.acts[hook], self.clean[hook]
        q_axis, k_axis = _pos_axes(hook, corr_act, self.n_pos)
        live: list[tuple[int, int]] = []  # (start, cell)
        for c in cells:
            s = _first_change(self._patched(layer, c, corr_act, clean_act), corr_act, q_axis)
            # no-op, or after every position read
            if s is None or (s >= self.end and q_axis is not None):
                self.out[c] = self.baseline
            else:
                live.append((s, c))
        bar.update(len(cells) - len(live))
        live.sort()
        self.all_live += live
        row_bytes = variant_row_bytes(
            self.model,
            self.n_pos,
            corr_act[0].numel(),
            full_logits=not (self.metrics.restricted and self.windowed_model),
        )
        max_var = max(1, self.budget // (self.batch * row_bytes))
        windowed = q_axis is not None and self.kv_prefix and self.windowed_model
        chunks = _plan_chunks(
            [s if windowed else 0 for s, _ in live],
            self.batch,
            max_var,
            self.end,
            CALL_COST_ROWPOS.get(self.device.type, 24),
        )
        for a, b in chunks:
            if not self.windowed_model:
                vals = self._whole_forwards(layer, hook, [c for _, c in live[a:b]])
            else:
                vals = _run_chunk(
                    self.model,
                    self.corrupted,
                    self.metrics,
                    self.corrupted_sel,
                    layer,
                    hook,
                    [self._patched(layer, c, corr_act, clean_act) for _, c in live[a:b]],
                    live[a][0] if windowed else 0,
                    self.end if q_axis is not None else self.n_pos,
                    q_axis,
                    k_axis,
                    int(self.model.cfg.n_layers),
                    self.in_place[layer],
                    self.kv_prefix,
                )
            for (_, c), v in zip(live[a:b], vals):
                self.out[c] = v
            bar.update(b - a)

    def _whole_forwards(self, layer: int, hook: str, cells: list[int]) -> torch.Tensor:
        """The metrics of ``cells`` run as whole plain forwards (the families not run by hand)."""
        sweep = self.sweep
        logits, fired = run_cells(
            self.model,
            self.corrupted_tokens,
            cells,
            lambda c: sweep.indices[c],
            lambda c: hook,
            sweep.patch_setter,
            self.clean,
            self.in_place[layer],
        )
        if fired != [hook]:
            raise RuntimeError(f"{hook} fired {len(fired)} times in a patched run (expected once).")
        return self.metrics.evaluate(self.metrics.select(logits))

    def self_check(self) -> None:
        """Recompute a few variants, those that move the metrics most among them, with a
        plain run_with_hooks (:mod:`actstore.patching.self_check`); whole forwards are the
        check's own run already."""
        if not (self_check.ENABLED and self.all_live and self.windowed_model):
            return
        sweep, metrics, out, baseline = self.sweep, self.metrics, self.out, self.baseline
        cells = [c for _, c in self.all_live]
        # how much each moves the metrics
        moved = (out[cells] - baseline).abs().flatten(1).sum(1).tolist()
        self_check.check_variants(
            self.model,
            self.corrupted_tokens,
            self_check.pick(self.all_live, dict(zip(cells, moved)), self.end),
            lambda c: sweep.indices[c],
            lambda c: sweep.act_name(int(sweep.indices[c][0])),
            sweep.patch_setter,
            self.clean,
            next(iter(self.in_place.values())),
            lambda logits: metrics.evaluate(metrics.select(logits)),
            out,
            torch.cat([out.flatten(), baseline.flatten()]),
            float(self.corrupted_sel.abs().max()),
            self.kv_prefix,
        )


def _run_chunk(
    model: HookedModel,
    corrupted: _Corrupted,
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
        k, v = _block_kv(model, last, x[:, :-1])  # type: ignore[misc]
        prefix = PrefixKV(corrupted.keys, corrupted.values, start, n_var)
        prefix.extra[last] = (k, v)
        with attention_prefix(model, [last], prefix):
            y = model.blocks[last](x[:, -1:])
        x, start = (y[0] if isinstance(y, tuple) else y), end - 1
    return metrics.evaluate(_logits(model, metrics, corrupted, corrupted_sel, x, start, end, n_var))


def _logits(
    model: HookedModel,
    metrics: Metrics,
    corrupted: _Corrupted,
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
