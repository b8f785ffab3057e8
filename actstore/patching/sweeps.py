"""Vectorised activation patching: a drop-in for ``transformer_lens.patching``.

Every public function of ``transformer_lens.patching`` is here under the same name
and signature, with the same options (``reduce``, ``baseline``, a mapping of metrics,
``index_df``, ``return_index_df``) and the same results (to float32 rounding), so a
user switches by changing one import::

    from actstore import patching          # was: from transformer_lens import patching
    patching.get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric)

What differs is the cost: the patched variants run many at a time in the batch
dimension, from the patched block on (not from the embedding), over the positions a
patch can change only (the corrupted run's keys and values stand in for the earlier
ones), with logits only where the metric reads them; patches that change nothing are
not run at all. See :mod:`actstore.patching.engine`.

Extra keyword-only options on every sweep:
  ``clean_rows``     the store rows of the clean prompts when ``clean_cache`` is an
                     :class:`~actstore.ActivationStore` (clean activations read from disk)
  ``memory_budget``  bytes of activations one batched forward may use (default: a quarter
                     of the free RAM, at most 512 MiB; half the free GPU memory)
  ``progress``       show a tqdm bar (default True)
  ``kv_prefix``      reuse the corrupted run's keys and values of the positions before a
                     patch (default True); False runs every variant over all positions,
                     slower, relying on fewer internals of the libraries (the workaround the
                     self-check names if it ever fails)

Every sweep checks itself before returning: the variants that exercise the engine most
are recomputed with a plain ``run_with_hooks``, as ``transformer_lens.patching`` runs them,
and a disagreement raises :class:`~actstore.errors.EngineCheckError` naming the installed
versions (see :mod:`actstore.patching.self_check`; it costs about one forward per sweep).

Patches are written into the hooked activation, as transformer_lens's setters do under
``torch.no_grad()``. On a TransformerBridge that matters for ``hook_resid_mid``, which is
an alias of ``ln2.hook_in``: the tensor the block also adds the MLP's output to, so the
patch changes the residual stream, HookedTransformer's meaning of the hook. (With
gradients enabled, transformer_lens.patching clones the activation first and its
resid_mid patch reaches only the MLP's input.)

Metrics: a TransformerLens metric (logits (batch, pos, d_vocab) -> scalar, or (batch,)
under ``reduce='mean'/'none'``) works unchanged. A *batched* metric, one with a
``batched(logits)`` method taking the logits of many variants (variant, batch, pos,
vocab) and returning (variant,) or (variant, batch), is faster; :func:`batched_metric`
wraps a function as one, and :class:`LogitDiff` is the built-in logit difference
(normalised or not), both usable with ``transformer_lens.patching`` too.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import pandas as pd
import torch
from jaxtyping import Float, Int
from transformer_lens import patching as _tl
from transformer_lens.patching import (  # the reference's own setters, re-exported unchanged
    layer_head_dest_src_pos_pattern_patch_setter,
    layer_head_pattern_patch_setter,
    layer_head_pos_pattern_patch_setter,
    layer_head_vector_patch_setter,
    layer_pos_head_vector_patch_setter,
    layer_pos_patch_setter,
    make_df_from_ranges,
)
from transformer_lens.utilities import get_act_name

from ..errors import ConfigError
from .clean import CleanSource
from .engine import Sweep, run_sweep
from .metrics import BatchedMetric, LogitDiff, MetricFn, Metrics, batched_metric
from .path import direct_path_sweep

__all__ = [
    "generic_activation_patch", "get_act_patch_resid_pre", "get_act_patch_resid_mid", "get_act_patch_attn_out",
    "get_act_patch_mlp_out", "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_k_by_pos", "get_act_patch_attn_head_v_by_pos", "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_pattern_dest_src_pos", "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_q_all_pos", "get_act_patch_attn_head_k_all_pos", "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_pattern_all_pos", "get_act_patch_attn_head_all_pos_every",
    "get_act_patch_attn_head_by_pos_every", "get_act_patch_block_every", "get_act_patch_direct_path",
    "get_act_patch_direct_path_all_sources", "PatchingResult", "make_df_from_ranges", "layer_pos_patch_setter",
    "layer_pos_head_vector_patch_setter", "layer_head_vector_patch_setter", "layer_head_pattern_patch_setter",
    "layer_head_pos_pattern_patch_setter", "layer_head_dest_src_pos_pattern_patch_setter", "BatchedMetric",
    "batched_metric", "LogitDiff",
]

# TransformerLens 4 types the rich return; 3.x has none (its sweeps return tensors only)
PatchingResult: Any = getattr(_tl, "PatchingResult", None)

_REDUCE_MODES = ("scalar", "mean", "none")


# --- the generic sweep ------------------------------------------------------------------


def generic_activation_patch(
    model: Any,
    corrupted_tokens: Int[torch.Tensor, "batch pos"],
    clean_cache: Any,
    patching_metric: Union[MetricFn, Mapping[str, MetricFn]],
    patch_setter: Callable[[torch.Tensor, Sequence[int], torch.Tensor], torch.Tensor],
    activation_name: str,
    index_axis_names: Optional[Sequence[str]] = None,
    index_df: Optional[pd.DataFrame] = None,
    return_index_df: bool = False,
    *,
    reduce: str = "scalar",
    baseline: bool = False,
    clean_rows: Union[Sequence[int], slice, None] = None,
    memory_budget: Optional[int] = None,
    progress: bool = True,
    kv_prefix: bool = True,
) -> Any:
    """``transformer_lens.patching.generic_activation_patch``, vectorised: the same
    arguments, return values and errors (``ValueError``s are :class:`ConfigError`).

    Args:
        model: a TransformerBridge (GPT-2 family), in eval mode.
        corrupted_tokens: (batch, pos) token ids of the corrupted run.
        clean_cache: the clean run's activations: an ActivationCache (or a mapping of
            hook name -> (batch, ...) tensor), or an ActivationStore with ``clean_rows``.
        patching_metric: logits -> scalar (or (batch,) under reduce 'mean'/'none'), a
            batched metric, or a mapping of names to either.
        patch_setter: as in transformer_lens.patching; so are activation_name,
            index_axis_names, index_df, return_index_df, reduce and baseline.
        clean_rows: see the module docstring; so are memory_budget, progress and kv_prefix.

    Returns:
        A tensor with one axis per index axis (flat, one value per ``index_df`` row, when
        ``index_df`` is given), optionally with the ``index_df``; a PatchingResult under
        ``reduce='none'``, ``baseline=True`` or a mapping of metrics.
    """
    return _generic_patch(partial(run_sweep, kv_prefix=kv_prefix), model, corrupted_tokens, clean_cache,
                          patching_metric, patch_setter,
                          activation_name, index_axis_names, index_df, return_index_df, reduce=reduce,
                          baseline=baseline, clean_rows=clean_rows, memory_budget=memory_budget, progress=progress)


# (model, corrupted tokens, clean source, metrics, sweep, memory budget, progress) ->
# (values (index, metric[, batch]), baseline (metric[, batch])): run_sweep, or attribution's
SweepRunner = Callable[[Any, torch.Tensor, CleanSource, Metrics, Sweep, Optional[int], bool],
                       "tuple[torch.Tensor, torch.Tensor]"]


def _generic_patch(runner: SweepRunner, model: Any, corrupted_tokens: torch.Tensor, clean_cache: Any,
                   patching_metric: Any, patch_setter: Callable[..., torch.Tensor], activation_name: str,
                   index_axis_names: Optional[Sequence[str]], index_df: Optional[pd.DataFrame],
                   return_index_df: bool, *, reduce: str, baseline: bool, clean_rows: Any,
                   memory_budget: Optional[int], progress: bool) -> Any:
    """generic_activation_patch's checks, patch indices and result shaping around
    ``runner``, which computes the values of every index."""
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
        raise ConfigError("return_index_df only applies to the tensor return; a PatchingResult carries index_df")
    if want_result and PatchingResult is None:
        raise ConfigError("reduce='none', baseline=True and metric mappings return a PatchingResult, which needs "
                          "transformer_lens>=4; upgrade it or use the default tensor return.")
    if corrupted_tokens.ndim == 1:
        corrupted_tokens = corrupted_tokens[None]
    corrupted_tokens = corrupted_tokens.to(model.cfg.device)
    batch, n_pos = (int(n) for n in corrupted_tokens.shape)

    if index_df is None:
        if index_axis_names is None:
            raise ConfigError("pass index_axis_names (e.g. ('layer', 'pos')) or an index_df of patch indices.")
        n_heads = model.cfg.n_heads
        if activation_name in ("k", "v") and getattr(model.cfg, "n_key_value_heads", None) is not None:
            n_heads = model.cfg.n_key_value_heads
        sizes = {"layer": model.cfg.n_layers, "pos": n_pos, "head_index": n_heads, "head": n_heads,
                 "src_pos": n_pos, "dest_pos": n_pos}
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
    sweep = Sweep(indices=indices, act_name=lambda layer: get_act_name(activation_name, layer=layer),
                  patch_setter=patch_setter)
    values, base = runner(model, corrupted_tokens, CleanSource(clean_cache, model, n_pos, batch, clean_rows),
                          Metrics(metrics, per_example, batch, n_pos), sweep, memory_budget, progress)
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
        baseline=None if baseline_values is None else (baseline_values if has_metric_axis else baseline_values[0]),
        has_metric_axis=has_metric_axis,
    )


# --- the named sweeps: one line each ----------------------------------------------------


def _named(activation_name: str, patch_setter: Callable[..., torch.Tensor], axes: tuple[str, ...], what: str
           ) -> Callable[..., Any]:
    sweep = partial(generic_activation_patch, patch_setter=patch_setter, activation_name=activation_name,
                    index_axis_names=axes)
    sweep.__doc__ = (f"Patch {what}, one variant per ({', '.join(axes)}): a tensor of shape [{', '.join(axes)}] "
                     "(or a PatchingResult, see generic_activation_patch). Same as transformer_lens.patching's "
                     "function of this name, vectorised.")
    return sweep


_LP, _LPH, _LH = ("layer", "pos"), ("layer", "pos", "head"), ("layer", "head")
get_act_patch_resid_pre = _named("resid_pre", layer_pos_patch_setter, _LP, "the residual stream entering each block")
get_act_patch_resid_mid = _named("resid_mid", layer_pos_patch_setter, _LP, "the residual stream between attention and MLP")
get_act_patch_attn_out = _named("attn_out", layer_pos_patch_setter, _LP, "each attention layer's output")
get_act_patch_mlp_out = _named("mlp_out", layer_pos_patch_setter, _LP, "each MLP layer's output")
get_act_patch_attn_head_out_by_pos = _named("z", layer_pos_head_vector_patch_setter, _LPH, "each head's output (z)")
get_act_patch_attn_head_q_by_pos = _named("q", layer_pos_head_vector_patch_setter, _LPH, "each head's queries")
get_act_patch_attn_head_k_by_pos = _named("k", layer_pos_head_vector_patch_setter, _LPH, "each head's keys")
get_act_patch_attn_head_v_by_pos = _named("v", layer_pos_head_vector_patch_setter, _LPH, "each head's values")
get_act_patch_attn_head_pattern_by_pos = _named("pattern", layer_head_pos_pattern_patch_setter,
                                                ("layer", "head_index", "dest_pos"), "each head's pattern row")
get_act_patch_attn_head_pattern_dest_src_pos = _named("pattern", layer_head_dest_src_pos_pattern_patch_setter,
                                                      ("layer", "head_index", "dest_pos", "src_pos"),
                                                      "each entry of each head's pattern")
get_act_patch_attn_head_out_all_pos = _named("z", layer_head_vector_patch_setter, _LH, "each head's output, all positions")
get_act_patch_attn_head_q_all_pos = _named("q", layer_head_vector_patch_setter, _LH, "each head's queries, all positions")
get_act_patch_attn_head_k_all_pos = _named("k", layer_head_vector_patch_setter, _LH, "each head's keys, all positions")
get_act_patch_attn_head_v_all_pos = _named("v", layer_head_vector_patch_setter, _LH, "each head's values, all positions")
get_act_patch_attn_head_pattern_all_pos = _named("pattern", layer_head_pattern_patch_setter, ("layer", "head_index"),
                                                 "each head's whole pattern")


# --- several sweeps stacked ---------------------------------------------------------------


def _every(sweeps: Sequence[Callable[..., Any]], axes: Sequence[tuple[str, ...]], type_names: Sequence[str],
           axis_order: tuple[str, ...], model: Any, corrupted_tokens: torch.Tensor, clean_cache: Any,
           metric: Any, kwargs: dict[str, Any]) -> Any:
    """Run sweeps and stack them on a leading patch_type axis, exactly as
    transformer_lens.patching's *_every helpers do (baseline computed once; k/v
    zero-padded to n_heads; pattern by position moved to (layer, pos, head))."""
    kwargs = dict(kwargs)
    baseline = bool(kwargs.pop("baseline", False))
    results = []
    for i, (sweep, names) in enumerate(zip(sweeps, axes)):
        out = sweep(model, corrupted_tokens, clean_cache, metric, baseline=baseline and i == 0, **kwargs)
        if baseline and isinstance(out, torch.Tensor):
            out = _tl._wrap_tensor_result(out, names)
        results.append(out)
    if all(isinstance(r, torch.Tensor) for r in results):
        if "head" in axis_order:
            n_heads = results[0].size(-1)
            for i, name in enumerate(type_names):
                if name in ("k", "v"):
                    results[i] = torch.nn.functional.pad(results[i], (0, n_heads - results[i].size(-1)))
                if name == "pattern" and "pos" in axis_order:
                    results[i] = results[i].permute(0, 2, 1)  # (layer, head, dest_pos) -> (layer, pos, head)
        return torch.stack(results, dim=0)
    return _tl._stack_patch_types(results, axis_order=axis_order, n_heads=model.cfg.n_heads if "head" in axis_order
                                  else 0, type_names=type_names)


def get_act_patch_attn_head_all_pos_every(model: Any, corrupted_tokens: Int[torch.Tensor, "batch pos"],
                                          clean_cache: Any, metric: Any, **kwargs: Any) -> Any:
    """Every head across all positions for out, q, k, v and pattern: [5, n_layers, n_heads]
    (or a PatchingResult with a leading patch_type axis under reduce/baseline)."""
    return _every((get_act_patch_attn_head_out_all_pos, get_act_patch_attn_head_q_all_pos,
                   get_act_patch_attn_head_k_all_pos, get_act_patch_attn_head_v_all_pos,
                   get_act_patch_attn_head_pattern_all_pos), (_LH,) * 4 + (("layer", "head_index"),),
                  ("out", "q", "k", "v", "pattern"), _LH, model, corrupted_tokens, clean_cache, metric, kwargs)


def get_act_patch_attn_head_by_pos_every(model: Any, corrupted_tokens: Int[torch.Tensor, "batch pos"],
                                         clean_cache: Any, metric: Any, **kwargs: Any) -> Any:
    """Every head by position for out, q, k, v and pattern: [5, n_layers, pos, n_heads]."""
    return _every((get_act_patch_attn_head_out_by_pos, get_act_patch_attn_head_q_by_pos,
                   get_act_patch_attn_head_k_by_pos, get_act_patch_attn_head_v_by_pos,
                   get_act_patch_attn_head_pattern_by_pos), (_LPH,) * 4 + (("layer", "head_index", "dest_pos"),),
                  ("out", "q", "k", "v", "pattern"), _LPH, model, corrupted_tokens, clean_cache, metric, kwargs)


def get_act_patch_block_every(model: Any, corrupted_tokens: Int[torch.Tensor, "batch pos"], clean_cache: Any,
                              metric: Any, **kwargs: Any) -> Any:
    """resid_pre, attn_out and mlp_out by position: [3, n_layers, pos]."""
    return _every((get_act_patch_resid_pre, get_act_patch_attn_out, get_act_patch_mlp_out), (_LP,) * 3,
                  ("resid_pre", "attn_out", "mlp_out"), _LP, model, corrupted_tokens, clean_cache, metric, kwargs)


# --- direct path patching ------------------------------------------------------------------


def get_act_patch_direct_path(model: Any, corrupted_tokens: Int[torch.Tensor, "batch pos"], clean_cache: Any,
                              corrupted_cache: Any, patching_metric: MetricFn, src_layer: int, src_head: int,
                              component: str = "q", verbose: bool = True, *,
                              clean_rows: Union[Sequence[int], slice, None] = None,
                              memory_budget: Optional[int] = None, kv_prefix: bool = True
                              ) -> Float[torch.Tensor, "n_layers n_heads"]:
    """``transformer_lens.patching.get_act_patch_direct_path``, vectorised: the edge from
    head (src_layer, src_head) into each later head's ``component`` ('q', 'k' or 'v')
    input patched alone (the source's clean-minus-corrupted write ``z @ W_O`` added to
    that head's own pre-``ln1`` residual), one value per destination head:
    [n_layers, n_heads], 0.0 in rows ``l <= src_layer`` (placeholders, as the reference).

    ``patching_metric``: logits -> scalar, or a batched metric (faster). ``clean_cache``
    may be an ActivationStore (with ``clean_rows``) holding ``attn.hook_z``;
    ``corrupted_cache`` may be None (the corrupted z is computed here). ``verbose``
    shows a progress bar."""
    out = direct_path_sweep(model, corrupted_tokens, clean_cache, corrupted_cache, patching_metric,
                            [(int(src_layer), int(src_head))], component, clean_rows=clean_rows,
                            memory_budget=memory_budget, progress=verbose, kv_prefix=kv_prefix)
    return out[0]


def get_act_patch_direct_path_all_sources(model: Any, corrupted_tokens: Int[torch.Tensor, "batch pos"],
                                          clean_cache: Any, corrupted_cache: Any, patching_metric: MetricFn,
                                          component: str = "q", verbose: bool = True, *,
                                          clean_rows: Union[Sequence[int], slice, None] = None,
                                          memory_budget: Optional[int] = None, kv_prefix: bool = True
                                          ) -> Float[torch.Tensor, "n_layers n_heads n_layers n_heads"]:
    """``transformer_lens.patching.get_act_patch_direct_path_all_sources``, vectorised:
    ``results[sl, sh, dl, dh]`` is the metric with the edge (sl, sh) -> (dl, dh)'s
    ``component`` input patched, 0.0 where ``dl <= sl``. Every edge into one layer runs
    in the same batched forwards. Options as :func:`get_act_patch_direct_path`."""
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    sources = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    out = direct_path_sweep(model, corrupted_tokens, clean_cache, corrupted_cache, patching_metric, sources,
                            component, clean_rows=clean_rows, memory_budget=memory_budget, progress=verbose,
                            kv_prefix=kv_prefix)
    return out.reshape(n_layers, n_heads, n_layers, n_heads)
