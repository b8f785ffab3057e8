"""Attribution patching: the first-order estimate of every activation-patching sweep.

Activation patching runs one (batched) forward per patch. Attribution patching
(Nanda 2023; Syed et al. 2023) replaces them all by one forward and one backward of
the corrupted run: for a patch that sets a slice of an activation ``a`` from the
corrupted run's value to the clean one,

    metric(patched) ~= metric(corrupted) + sum over the slice of (a_clean - a_corrupted) * d metric / d a

with the gradient taken on the corrupted run (the "denoising" direction: positive =
patching toward clean raises the metric). It is exact where the metric is an affine
function of the patched activation, and a linear approximation elsewhere (LayerNorm,
softmax and MLP nonlinearities between the site and the logits).

Every sweep of :mod:`actstore.patching` is here under the same name, signature and
options, with results of the same shape, so the two are compared cell by cell::

    from actstore import patching
    from actstore.patching import attribution
    exact = patching.get_act_patch_attn_head_out_by_pos(model, corrupted, clean_cache, metric)
    approx = attribution.get_act_patch_attn_head_out_by_pos(model, corrupted, clean_cache, metric)

By default each cell holds the *estimated patched metric*, ``metric(corrupted) +
attribution``, i.e. the quantity the exact sweep measures (with a normalised
:class:`~actstore.patching.LogitDiff` the corrupted metric is 0, so it is the
attribution itself); ``as_effect=True`` returns the attribution alone.
:func:`attribution_patch` runs several sweeps from one forward and backward.

Metrics are those exact patching takes (plain logits -> scalar callables, batched
metrics such as ``LogitDiff``, or a mapping of names to metrics: one backward per
metric), differentiated with respect to each swept activation. Under ``reduce='mean'``
or ``'none'`` the metric returns one value per prompt and each prompt's value is
assumed to depend on that prompt's activations only (true of a transformer run).
The clean activations come from an ActivationCache, a mapping, or an ActivationStore
(``clean_rows``), as for exact patching. Results are float32 (float64 for a float64
model); ``memory_budget`` is accepted for compatibility and unused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from jaxtyping import Int

from ..errors import ConfigError
from ..model_protocol import HookedModel
from . import sweeps as _p
from . import table as _table
from .clean import CleanSource
from .engine import Sweep, check_model
from .generic import SweepRunner, generic_patch
from .grad_pass import GradPass, SharedGradPass
from .metrics import Metrics
from .stack import stack_sweeps, stacked_sweep

__all__ = [
    "attribution_patch",
    "generic_attribution_patch",
    "SWEEPS",
    # get_act_patch_resid_pre, ...: one per sweep of the table
    *(row.function for row in _table.SWEEPS.values()),
    "compare",
    "plot_comparison",
]


# --- per-cell attributions ---------------------------------------------------------------------

# TransformerLens's setters: which axes of the activation (batch first) a patch index
# names (after the layer), and which are summed over (the patched slice)
_KNOWN_SETTERS: dict[Any, Callable[[torch.Tensor], torch.Tensor]] = {
    _p.layer_pos_patch_setter: lambda t: t.flatten(2).sum(-1),  # (batch, pos)
    _p.layer_pos_head_vector_patch_setter: lambda t: t.sum(-1),  # (batch, pos, head)
    _p.layer_head_vector_patch_setter: lambda t: t.sum((1, 3)),  # (batch, head)
    _p.layer_head_pattern_patch_setter: lambda t: t.sum((2, 3)),  # (batch, head)
    _p.layer_head_pos_pattern_patch_setter: lambda t: t.sum(-1),  # (batch, head, dest_pos)
    # (batch, head, dest_pos, src_pos)
    _p.layer_head_dest_src_pos_pattern_patch_setter: lambda t: t,
}


def _cell_attributions(
    sweep: Sweep, cells: list[int], corrupted: torch.Tensor, clean: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """(cell, batch): the sum over each cell's patched slice of (clean - corrupted) * grad."""
    reduce = _KNOWN_SETTERS.get(sweep.patch_setter)
    if reduce is not None:
        table = reduce((clean - corrupted) * grad)  # (batch, *index axes after the layer)
        idx = torch.tensor(
            [sweep.indices[c][1:] for c in cells], dtype=torch.long, device=table.device
        )
        return table.movedim(0, -1)[tuple(idx.T)]  # (cell, batch)
    out = []  # any other setter: what it changes, times the gradient
    for c in cells:
        patched = sweep.patch_setter(corrupted.clone(), sweep.indices[c], clean)
        out.append(((patched - corrupted) * grad).flatten(1).sum(1))
    return torch.stack(out)


def _runner(shared: SharedGradPass | None, as_effect: bool) -> SweepRunner:
    def run(
        model: HookedModel,
        tokens: torch.Tensor,
        clean: CleanSource,
        metrics: Metrics,
        sweep: Sweep,
        memory_budget: int | None,
        progress: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        check_model(model, "Attribution patching")
        by_hook: dict[str, list[int]] = {}
        for c, index in enumerate(sweep.indices):
            by_hook.setdefault(sweep.act_name(int(index[0])), []).append(c)
        grad_pass = (
            shared.get(model, tokens, metrics, list(by_hook))
            if shared is not None
            else GradPass(model, tokens, list(by_hook), metrics)
        )
        base = grad_pass.baseline
        out = torch.zeros(
            (len(sweep.indices),) + tuple(base.shape), dtype=base.dtype, device=base.device
        )
        for hook, cells in by_hook.items():
            corr = grad_pass.acts[hook].to(base.dtype)
            clean_act = clean[hook].to(base.dtype)
            for m, name in enumerate(metrics.fns):
                attr = _cell_attributions(
                    sweep, cells, corr, clean_act, grad_pass.grads[name][hook].to(base.dtype)
                )
                out[cells, m] = attr if metrics.per_example else attr.sum(-1)
        return (out if as_effect else out + base), base

    return run


# --- the sweeps --------------------------------------------------------------------------------


@_p.generic_signature
def generic_attribution_patch(
    *args: Any, as_effect: bool = False, _shared: SharedGradPass | None = None, **kwargs: Any
) -> Any:
    """The attribution estimate of :func:`actstore.patching.generic_activation_patch`:
    the same arguments and return shapes (tensor, ``(tensor, index_df)`` or
    PatchingResult); each cell is ``metric(corrupted) + sum((patched - corrupted) *
    grad)`` over the activation ``patch_setter`` changes (``as_effect=True``: without
    the ``metric(corrupted)`` term). ``baseline`` is the corrupted run's metric."""
    return generic_patch(_runner(_shared, as_effect), *args, **kwargs)


def _single(row: _table.SweepRow) -> Any:
    fn = _p.single_sweep(generic_attribution_patch, row)
    fn.__doc__ = (
        "Attribution estimate of actstore.patching's (= transformer_lens.patching's) sweep of this name: "
        f"a tensor of shape [{', '.join(row.axes)}] (see generic_attribution_patch)."
    )
    return fn


def _stack(row: _table.SweepRow) -> Callable[..., Any]:
    doc = (
        f"Attribution estimate of actstore.patching.{row.function} (the same stacked shape), "
        "every patch type from one forward and backward."
    )
    return stacked_sweep(
        row, lambda model: _parts(row, SharedGradPass(_hooks_of(model, row.name))), doc, __name__
    )


#: every sweep's function by name (also bound in the module as get_act_patch_<name>): one per row of the table
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    name: _stack(row) if row.kind == "stack" else _single(row)
    for name, row in _table.SWEEPS.items()
}
globals().update({row.function: _FUNCTIONS[name] for name, row in _table.SWEEPS.items()})
#: every sweep name attribution_patch accepts: the table's (actstore.patching.table.SWEEPS)
SWEEPS: tuple[str, ...] = tuple(_table.SWEEPS)


def _hooks_of(model: HookedModel, name: str) -> list[str]:
    return _table.SWEEPS[name].hooks(int(model.cfg.n_layers))


def _run_named(
    name: str,
    model: HookedModel,
    corrupted_tokens: torch.Tensor,
    clean_cache: Any,
    metric: Any,
    shared: SharedGradPass,
    kwargs: dict[str, Any],
) -> Any:
    row = _table.SWEEPS[name]
    if row.kind == "single":
        return _FUNCTIONS[name](
            model, corrupted_tokens, clean_cache, metric, _shared=shared, **kwargs
        )
    return stack_sweeps(
        row, _parts(row, shared), model, corrupted_tokens, clean_cache, metric, kwargs
    )


def _parts(row: _table.SweepRow, shared: SharedGradPass) -> list[Callable[..., Any]]:
    """The functions of a stack row's parts, sharing one gradient pass."""
    return [partial(_FUNCTIONS[part.name], _shared=shared) for part in row.parts]


def attribution_patch(
    model: HookedModel,
    corrupted_tokens: Int[torch.Tensor, "batch pos"],
    clean: Any,
    metric: Any,
    sweeps: Sequence[str] = ("resid_pre",),
    **kwargs: Any,
) -> dict[str, Any]:
    """Several attribution sweeps from one forward and one backward of the corrupted run
    (per metric): ``{sweep name: result}``, each as the sweep's function returns it.

    Args:
        model: a TransformerBridge (GPT-2 family) in eval mode.
        corrupted_tokens: (batch, pos) token ids.
        clean: the clean prompts' token ids (batch, pos) (their activations are computed
            here), or their activations: an ActivationCache, a mapping, or an
            ActivationStore with ``clean_rows=``.
        metric: as for actstore.patching (plain, batched, or a mapping of names to metrics).
        sweeps: names of :data:`SWEEPS` (the table's, e.g. "resid_pre", "attn_head_out_by_pos",
            "block_every").
        kwargs: the sweeps' options (reduce, baseline, as_effect, clean_rows, ...).
    """
    unknown = [s for s in sweeps if s not in SWEEPS]
    if unknown:
        raise ConfigError(f"Unknown sweep {unknown[0]!r}; expected one of {', '.join(SWEEPS)}.")
    check_model(model, "Attribution patching")
    hooks = sorted({h for s in sweeps for h in _hooks_of(model, s)})
    if isinstance(clean, torch.Tensor) and not torch.is_floating_point(clean):
        with torch.no_grad():
            _, clean = model.run_with_cache(
                clean.to(model.cfg.device), names_filter=lambda n: n in set(hooks)
            )
    shared = SharedGradPass(hooks)
    return {
        s: _run_named(s, model, corrupted_tokens, clean, metric, shared, dict(kwargs))
        for s in sweeps
    }


# --- attribution against exact -----------------------------------------------------------------


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return None  # undefined: fewer than two cells, or one side constant
    return float(np.corrcoef(x, y)[0, 1])


def compare(exact: Any, approx: Any, changed: Any = None) -> dict[str, Any]:
    """How well attribution tracks exact patching on the same cells (same shapes):
    ``pearson`` (Pearson r over every cell; None where undefined), ``n_cells``, and with
    a boolean ``changed`` mask (cells whose patch changes anything; the others are equal
    in both by construction and inflate r) ``pearson_changed`` and ``n_changed``."""
    e, a = (np.asarray(torch.as_tensor(v).detach().cpu().double()) for v in (exact, approx))
    if e.shape != a.shape:
        raise ConfigError(
            f"compare: exact {e.shape} and attribution {a.shape} results differ in shape."
        )
    out: dict[str, Any] = {"pearson": _pearson(e, a), "n_cells": int(e.size)}
    if changed is not None:
        m = np.broadcast_to(np.asarray(changed, dtype=bool), e.shape)
        out.update(pearson_changed=_pearson(e[m], a[m]), n_changed=int(m.sum()))
    return out


def plot_comparison(
    exact: Any,
    approx: Any,
    path: str,
    *,
    title: str,
    xlabel: str = "exact patching",
    ylabel: str = "attribution patching",
) -> str:
    """Scatter of attribution against exact values, one point per cell, with y = x."""
    from ..plots import pyplot

    plt = pyplot()
    e, a = (np.asarray(torch.as_tensor(v).detach().cpu().double()).ravel() for v in (exact, approx))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(e, a, s=10, alpha=0.6)
    lo, hi = float(min(e.min(), a.min())), float(max(e.max(), a.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="y = x")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
