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

import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import partial, wraps
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from transformer_lens.patching import (  # the reference's own setters, re-exported unchanged
    layer_head_dest_src_pos_pattern_patch_setter,
    layer_head_pattern_patch_setter,
    layer_head_pos_pattern_patch_setter,
    layer_head_vector_patch_setter,
    layer_pos_head_vector_patch_setter,
    layer_pos_patch_setter,
    make_df_from_ranges,
)

from ..model_protocol import HookedModel
from .engine import run_sweep
from .generic import PatchingResult, generic_patch
from .metrics import BatchedMetric, LogitDiff, MetricFn, batched_metric
from .path import direct_path_sweep
from .stack import stacked_sweep
from .table import SWEEPS, SweepRow

__all__ = [
    "generic_activation_patch",
    "get_act_patch_resid_pre",
    "get_act_patch_resid_mid",
    "get_act_patch_attn_out",
    "get_act_patch_mlp_out",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_pattern_dest_src_pos",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_k_all_pos",
    "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_pattern_all_pos",
    "get_act_patch_attn_head_all_pos_every",
    "get_act_patch_attn_head_by_pos_every",
    "get_act_patch_block_every",
    "get_act_patch_direct_path",
    "get_act_patch_direct_path_all_sources",
    "PatchingResult",
    "make_df_from_ranges",
    "layer_pos_patch_setter",
    "layer_pos_head_vector_patch_setter",
    "layer_head_vector_patch_setter",
    "layer_head_pattern_patch_setter",
    "layer_head_pos_pattern_patch_setter",
    "layer_head_dest_src_pos_pattern_patch_setter",
    "BatchedMetric",
    "batched_metric",
    "LogitDiff",
]

# --- the generic sweep ------------------------------------------------------------------


def generic_signature(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Make ``fn(*args, <its own keyword-only options>, **kwargs)``, which passes ``args``
    and ``kwargs`` on to :func:`generic_patch`, present generic_activation_patch's
    signature (less kv_prefix) plus its own options, and check every call against it (a TypeError naming
    ``fn`` and the argument, as a plain def gives)."""
    common = [
        p
        for p in inspect.signature(generic_activation_patch).parameters.values()
        if p.name != "kv_prefix"
    ]
    own = [p for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
    sig = inspect.Signature(common + own, return_annotation="Any")

    @wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            sig.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{fn.__name__}(): {e}") from None
        return fn(*args, **kwargs)

    checked.__signature__ = sig  # type: ignore[attr-defined]
    return checked


def generic_activation_patch(
    model: HookedModel,
    corrupted_tokens: Int[torch.Tensor, "batch pos"],
    clean_cache: Any,
    patching_metric: MetricFn | Mapping[str, MetricFn],
    patch_setter: Callable[[torch.Tensor, Sequence[int], torch.Tensor], torch.Tensor],
    activation_name: str,
    index_axis_names: Sequence[str] | None = None,
    index_df: pd.DataFrame | None = None,
    return_index_df: bool = False,
    *,
    reduce: str = "scalar",
    baseline: bool = False,
    clean_rows: Sequence[int] | slice | None = None,
    memory_budget: int | None = None,
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
    return generic_patch(
        partial(run_sweep, kv_prefix=kv_prefix),
        model,
        corrupted_tokens,
        clean_cache,
        patching_metric,
        patch_setter,
        activation_name,
        index_axis_names,
        index_df,
        return_index_df,
        reduce=reduce,
        baseline=baseline,
        clean_rows=clean_rows,
        memory_budget=memory_budget,
        progress=progress,
    )


# --- the named sweeps: rows of actstore.patching.table -------------------------------------


def single_sweep(generic: Callable[..., Any], row: SweepRow) -> Any:
    """A single sweep of the table as a partial of ``generic`` (generic_activation_patch or
    generic_attribution_patch), as transformer_lens.patching defines them."""
    return partial(
        generic, patch_setter=row.setter, activation_name=row.activation, index_axis_names=row.axes
    )


def _named(name: str) -> Any:
    sweep = single_sweep(generic_activation_patch, SWEEPS[name])
    sweep.__doc__ = SWEEPS[name].doc
    return sweep


get_act_patch_resid_pre = _named("resid_pre")
get_act_patch_resid_mid = _named("resid_mid")
get_act_patch_attn_out = _named("attn_out")
get_act_patch_mlp_out = _named("mlp_out")
get_act_patch_attn_head_out_by_pos = _named("attn_head_out_by_pos")
get_act_patch_attn_head_q_by_pos = _named("attn_head_q_by_pos")
get_act_patch_attn_head_k_by_pos = _named("attn_head_k_by_pos")
get_act_patch_attn_head_v_by_pos = _named("attn_head_v_by_pos")
get_act_patch_attn_head_pattern_by_pos = _named("attn_head_pattern_by_pos")
get_act_patch_attn_head_pattern_dest_src_pos = _named("attn_head_pattern_dest_src_pos")
get_act_patch_attn_head_out_all_pos = _named("attn_head_out_all_pos")
get_act_patch_attn_head_q_all_pos = _named("attn_head_q_all_pos")
get_act_patch_attn_head_k_all_pos = _named("attn_head_k_all_pos")
get_act_patch_attn_head_v_all_pos = _named("attn_head_v_all_pos")
get_act_patch_attn_head_pattern_all_pos = _named("attn_head_pattern_all_pos")


# --- several sweeps stacked ---------------------------------------------------------------


def _stacked(name: str) -> Callable[..., Any]:
    row = SWEEPS[name]
    return stacked_sweep(
        row, lambda model: [globals()[part.function] for part in row.parts], row.doc, __name__
    )


get_act_patch_attn_head_all_pos_every = _stacked("attn_head_all_pos_every")
get_act_patch_attn_head_by_pos_every = _stacked("attn_head_by_pos_every")
get_act_patch_block_every = _stacked("block_every")


# --- direct path patching ------------------------------------------------------------------


def get_act_patch_direct_path(
    model: HookedModel,
    corrupted_tokens: Int[torch.Tensor, "batch pos"],
    clean_cache: Any,
    corrupted_cache: Any,
    patching_metric: MetricFn,
    src_layer: int,
    src_head: int,
    component: str = "q",
    verbose: bool = True,
    *,
    clean_rows: Sequence[int] | slice | None = None,
    memory_budget: int | None = None,
    kv_prefix: bool = True,
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
    out = direct_path_sweep(
        model,
        corrupted_tokens,
        clean_cache,
        corrupted_cache,
        patching_metric,
        [(int(src_layer), int(src_head))],
        component,
        clean_rows=clean_rows,
        memory_budget=memory_budget,
        progress=verbose,
        kv_prefix=kv_prefix,
    )
    return out[0]


def get_act_patch_direct_path_all_sources(
    model: HookedModel,
    corrupted_tokens: Int[torch.Tensor, "batch pos"],
    clean_cache: Any,
    corrupted_cache: Any,
    patching_metric: MetricFn,
    component: str = "q",
    verbose: bool = True,
    *,
    clean_rows: Sequence[int] | slice | None = None,
    memory_budget: int | None = None,
    kv_prefix: bool = True,
) -> Float[torch.Tensor, "n_layers n_heads n_layers n_heads"]:
    """``transformer_lens.patching.get_act_patch_direct_path_all_sources``, vectorised:
    ``results[sl, sh, dl, dh]`` is the metric with the edge (sl, sh) -> (dl, dh)'s
    ``component`` input patched, 0.0 where ``dl <= sl``. Every edge into one layer runs
    in the same batched forwards. Options as :func:`get_act_patch_direct_path`."""
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    sources = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    out = direct_path_sweep(
        model,
        corrupted_tokens,
        clean_cache,
        corrupted_cache,
        patching_metric,
        sources,
        component,
        clean_rows=clean_rows,
        memory_budget=memory_budget,
        progress=verbose,
        kv_prefix=kv_prefix,
    )
    return out.reshape(n_layers, n_heads, n_layers, n_heads)
