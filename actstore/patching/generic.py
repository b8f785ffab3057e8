"""The generic sweep: what every patching sweep does around the values it computes.

:func:`generic_patch` is transformer_lens.patching's ``generic_activation_patch`` less
the computation itself: it checks the options (``reduce``, ``baseline``, a mapping of
metrics, ``index_axis_names`` or ``index_df``), makes the table of patch indices, checks
the hooks against the model, hands the sweep to a *runner* that computes every index's
values, and shapes them into the reference's return (a tensor, ``(tensor, index_df)`` or
a ``PatchingResult``). The runner is the exact engine's
(:func:`actstore.patching.engine.run_sweep`, for :mod:`actstore.patching.sweeps`) or the
gradient estimate's (:mod:`actstore.patching.attribution`), so the two take the same
arguments and return the same shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from transformer_lens import patching as _tl
from transformer_lens.patching import make_df_from_ranges

from ..errors import ConfigError
from ..families import adapter_for
from ..model_protocol import HookedModel
from .clean import CleanSource
from .engine import Sweep
from .metrics import Metrics
from .table import act_hook

__all__ = ["generic_patch", "SweepRunner", "PatchingResult"]

# TransformerLens 4 types the rich return; 3.x has none (its sweeps return tensors only)
PatchingResult: Any = getattr(_tl, "PatchingResult", None)

_REDUCE_MODES = ("scalar", "mean", "none")


# (model, corrupted tokens, clean source, metrics, sweep, memory budget, progress) ->
# (values (index, metric[, batch]), baseline (metric[, batch])): run_sweep, or attribution's
SweepRunner = Callable[
    [Any, torch.Tensor, CleanSource, Metrics, Sweep, int | None, bool],
    "tuple[torch.Tensor, torch.Tensor]",
]


def generic_patch(
    runner: SweepRunner,
    model: HookedModel,
    corrupted_tokens: torch.Tensor,
    clean_cache: Any,
    patching_metric: Any,
    patch_setter: Callable[..., torch.Tensor],
    activation_name: str,
    index_axis_names: Sequence[str] | None = None,
    index_df: pd.DataFrame | None = None,
    return_index_df: bool = False,
    *,
    reduce: str = "scalar",
    baseline: bool = False,
    clean_rows: Any = None,
    memory_budget: int | None = None,
    progress: bool = True,
) -> Any:
    """generic_activation_patch's checks, patch indices and result shaping around
    ``runner``, which computes the values of every index; the one body behind
    generic_activation_patch and generic_attribution_patch."""
    if reduce not in _REDUCE_MODES:
        raise ConfigError(f"reduce must be one of {_REDUCE_MODES}, got {reduce!r}")
    if isinstance(patching_metric, Mapping):
        has_metric_axis, metrics = True, dict(patching_metric)
        if not metrics:
            raise ConfigError("patching_metric mapping must contain at least one metric")
    else:
        has_metric_axis, metrics = False, {"metric": patching_metric}
    want_result = has_metric_axis or reduce == "none" or baseline
    if want_result and return_index_df:
        raise ConfigError(
            "return_index_df only applies to the tensor return; a PatchingResult carries index_df"
        )
    if want_result and PatchingResult is None:
        raise ConfigError(
            "reduce='none', baseline=True and metric mappings return a PatchingResult, which needs "
            "transformer_lens>=4; upgrade it or use the default tensor return."
        )
    if corrupted_tokens.ndim == 1:
        corrupted_tokens = corrupted_tokens[None]
    corrupted_tokens = corrupted_tokens.to(model.cfg.device)
    batch, n_pos = (int(n) for n in corrupted_tokens.shape)

    if index_df is None:
        if index_axis_names is None:
            raise ConfigError(
                "pass index_axis_names (e.g. ('layer', 'pos')) or an index_df of patch indices."
            )
        n_heads = model.cfg.n_heads
        if (
            activation_name in ("k", "v")
            and getattr(model.cfg, "n_key_value_heads", None) is not None
        ):
            n_heads = model.cfg.n_key_value_heads
        sizes = {
            "layer": model.cfg.n_layers,
            "pos": n_pos,
            "head_index": n_heads,
            "head": n_heads,
            "src_pos": n_pos,
            "dest_pos": n_pos,
        }
        axis_sizes = [sizes[name] for name in index_axis_names]
        index_df = make_df_from_ranges(axis_sizes, index_axis_names)
        flattened = False
    else:
        if index_axis_names is not None:
            raise ConfigError("pass either index_axis_names or index_df, not both.")
        axis_sizes = index_df.max().to_list()
        flattened = True

    per_example = reduce != "scalar"
    indices = [row.to_list() for _, row in index_df.iterrows()]
    sweep = Sweep(indices=indices, act_name=act_hook(activation_name), patch_setter=patch_setter)
    adapter_for(model, "Activation patching").check_hooks(
        model, sorted({sweep.act_name(int(i[0])) for i in indices}), f"Patching {activation_name!r}"
    )
    values, base = runner(
        model,
        corrupted_tokens,
        CleanSource(clean_cache, model, n_pos, batch, clean_rows),
        Metrics(metrics, per_example, batch, n_pos),
        sweep,
        memory_budget,
        progress,
    )
    # (index, metric[, batch]) -> (metric, *cells[, batch])
    values = values.movedim(1, 0)
    cells = (len(index_df),) if flattened else tuple(int(n) for n in axis_sizes)
    store = values.reshape((len(metrics),) + cells + values.shape[2:])
    baseline_values = base if baseline else None

    if reduce == "mean":
        store = store.mean(dim=-1)
        if baseline_values is not None:
            baseline_values = baseline_values.mean(dim=-1)
    if not want_result:
        return (store[0], index_df) if return_index_df else store[0]
    return PatchingResult(
        values=store if has_metric_axis else store[0],
        axis_names=[] if flattened else list(index_axis_names or []),
        index_df=index_df,
        metric_names=list(metrics),
        reduced=reduce != "none",
        baseline=None
        if baseline_values is None
        else (baseline_values if has_metric_axis else baseline_values[0]),
        has_metric_axis=has_metric_axis,
    )
