"""The vectorised engine behind :mod:`actstore.patching`.

One sweep = one activation name, one patch setter and a table of patch indices
(first column: layer). The reference (``transformer_lens.patching``) runs one full
forward per index. Here, for each layer:

1. The corrupted run is done once (one forward with capture hooks): the residual
   entering every block, the swept activation at every layer, every block's keys and
   values, and the logits (:mod:`actstore.patching.corrupted`).
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
   Steps 3 and 4 are :mod:`actstore.patching.hand_run`'s.

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
from ..model_protocol import HookedModel
from ..sites import layer_of
from . import self_check
from .checks import check_hand_run, check_model
from .chunks import CALL_COST_ROWPOS, default_memory_budget, variant_row_bytes
from .chunks import plan_chunks as _plan_chunks
from .clean import CleanValues
from .corrupted import CorruptedRun
from .hand_run import run_chunk as _run_chunk
from .hooked import run_cells
from .metrics import Metrics
from .projections import block_projections

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
        self.corrupted = CorruptedRun(
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
