"""`actstore patch`'s job: an activation-patching sweep over a file of prompt pairs.

Each line of the pairs file is a JSON object: the clean and corrupted prompts (the
same number of tokens) and the answer and wrong answer (one token each)::

    {"clean": "When Mary and John went to the store, John gave a drink to",
     "corrupted": "When Mary and John went to the store, Mary gave a drink to",
     "answer": " Mary", "wrong": " John"}

Instead of a file, ``--task`` generates the pairs of a standard task
(:mod:`actstore.patching.tasks`: ioi, ioi-flip, repeated-name, greater-than, factual with
``--facts``), deterministic from ``--seed``; ``--write-pairs`` saves them in this format.

Prompts are tokenised as BOS + text. The metric is the logit difference answer -
wrong at the last position. Pairs run ``batch_pairs`` at a time through
:mod:`actstore.patching` (clean activations from ``--store`` when given, read from
disk; a store that does not exist yet is first cached from the clean prompts). The
results group holds, per sweep, the patched logit difference of every pair and the
normalised mean over pairs (0 = corrupted, 1 = clean), with dimension names; a
heatmap PNG (layers by positions, labelled with the first pair's tokens) goes next to it.

``--method`` picks exact activation patching (default), attribution patching
(:mod:`actstore.patching.attribution`: one forward and backward per batch of pairs) or both,
stored side by side (``attribution_logit_diff``, ``attribution_normalised``) with their
Pearson correlation in the arrays' attributes and a scatter plot.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..store import ActivationStore, ResultWriter, is_store
from . import attribution
from . import sweeps as patching
from .clean import store_rows as _store_rows
from .config import METHODS, SWEEPS, PatchJobConfig
from .figures import heatmaps, scatter
from .pair_job import PairJob, check_separated, default_out, pair_source
from .pairs import check_source as _check_source
from .table import SweepRow

__all__ = ["PatchJobConfig", "PatchJobResult", "SWEEPS", "METHODS", "patch_pairs"]

# one vocabulary for dimensions: layer pos head dest_pos src_pos
_DIM_NAMES = {"head_index": "head"}


@dataclass
class PatchJobResult:
    out: str  # the results group (a store's path when written under its results/)
    prefix: str  # where this sweep's arrays are inside it
    figures: list[str]
    dims: tuple[str, ...]  # of the per-pair values, 'pair' first
    # (pair, *cells): exact patching's (attribution's when --method attribution)
    logit_diff: np.ndarray
    normalised: np.ndarray  # (*cells), likewise
    clean_logit_diff: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    corrupted_logit_diff: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    method: str = "exact"
    # (pair, *cells), estimated logit diffs
    attribution: np.ndarray | None = field(repr=False, default=None)
    attribution_normalised: np.ndarray | None = field(repr=False, default=None)  # (*cells)
    correlation: dict[str, Any] | None = None  # method both: attribution.compare of the two


class _Writer:
    """The sweep's result (actstore.store.results): under a store's results/, or in a
    results group of its own. Refuses, before any work, to replace a sweep's results
    without overwrite; an --overwrite run with another --method leaves none of the
    previous run's arrays beside its own."""

    def __init__(self, cfg: PatchJobConfig, store: ActivationStore | None):
        out = cfg.out
        if (
            out is not None
            and store is not None
            and os.path.abspath(out) == os.path.abspath(store.path)
        ):
            out = None
        if out is None and store is not None:
            self.store: ActivationStore | None = store
        elif out is not None and is_store(out):
            self.store = ActivationStore.open(out)
        else:
            self.store = None
        self.path = (
            self.store.path if self.store is not None else (out or default_out(cfg, "patch"))
        )
        self.prefix = f"patching/{cfg.sweep}"
        how: dict[str, Any] = dict(
            what=f"results of the {cfg.sweep} sweep",
            fix="pass --overwrite to replace them, or --out another path",
            unwritable_fix="pass --out a path you can write",
        )
        self.result = (
            ResultWriter.for_store(self.store, self.prefix, cfg.overwrite, **how)
            if self.store is not None
            else ResultWriter(self.path, self.prefix, cfg.overwrite, **how)
        )

    def __call__(
        self, name: str, data: np.ndarray, dims: Sequence[str], attrs: dict[str, Any]
    ) -> None:
        self.result.write(name, data, dims, attrs)


_NOT_SEPARATED = (
    "The mean clean and corrupted logit differences are the same ({clean:.6g} and {corrupted:.6g}), so "
    "the normalised effect is 0 / 0; nothing was written. Use pairs whose clean prompts the model "
    "separates from the corrupted ones (a pair and its swap cancel out)."
)


def _check_values(clean: np.ndarray, corrupted: np.ndarray, values: dict[str, np.ndarray]) -> None:
    """Refuse (before anything is written) results that are not numbers, or a normalised
    effect whose denominator, mean clean - mean corrupted logit difference, is within
    1e-4 of the largest logit difference of 0: noise divided by noise."""
    if not all(np.isfinite(v).all() for v in (clean, corrupted, *values.values())):
        raise ConfigError(
            "The model gave logit differences that are not finite (overflow in float16?); nothing was "
            "written. Pass --dtype float32."
        )
    check_separated(clean, corrupted, _NOT_SEPARATED)


def _check(cfg: PatchJobConfig) -> None:
    """Everything that can be checked before the model loads."""
    if cfg.sweep not in SWEEPS:
        raise ConfigError(f"Unknown sweep '{cfg.sweep}'; expected one of {', '.join(SWEEPS)}.")
    if cfg.metric not in ("normalised", "logit_diff"):
        raise ConfigError(f"Unknown metric '{cfg.metric}'; expected normalised or logit_diff.")
    if cfg.method not in METHODS:
        raise ConfigError(f"Unknown method '{cfg.method}'; expected one of {', '.join(METHODS)}.")
    if cfg.batch_pairs < 1:
        raise ConfigError(f"batch_pairs must be at least 1, got {cfg.batch_pairs}.")
    # per-pair values and baselines: TransformerLens 4's result type
    if patching.PatchingResult is None:
        from ..compat import versions

        raise ConfigError(
            f"actstore patch needs transformer_lens>=4 (installed: {versions()['transformer-lens']}) for "
            "its per-pair results; pip install 'transformer_lens>=4,<4.4', or call actstore.patching's "
            "sweeps from Python, whose default tensor return works with TransformerLens 3."
        )
    _check_source(cfg)


@dataclass
class _Sweeps:
    """Every method's sweep over every pair, gathered in batch order: per method the
    patched logit differences (pair, *cells), and per pair the clean and corrupted ones."""

    values: dict[str, np.ndarray]
    clean: np.ndarray  # (pair,)
    corrupted: np.ndarray  # (pair,)
    axis_names: list[str]
    type_names: Any  # the stack sweeps' patch types


def _run_sweeps(
    cfg: PatchJobConfig,
    job: PairJob,
    row: SweepRow,
    store: ActivationStore | None,
    rows: list[int] | None,
) -> _Sweeps:
    """Run the sweep of each method on the batches of ``--batch-pairs`` pairs (dealt out to
    the processes), the clean activations from the store's ``rows`` or a clean forward."""
    procs, model, pairs = job.procs, job.model, job.pairs
    bridge, n_pairs = model.bridge, int(pairs.clean.shape[0])
    fns = {
        m: getattr(patching if m == "exact" else attribution, row.function)
        for m in (("exact", "attribution") if cfg.method == "both" else (cfg.method,))
    }
    starts = list(range(0, n_pairs, cfg.batch_pairs))
    if procs.distributed and procs.main and cfg.progress:
        print(f"{procs.world} processes share the {len(starts)} batches of pairs")
    parts: dict[int, tuple[Any, ...]] = {}
    for i in procs.owned(range(len(starts))):
        a, b = starts[i], min(starts[i] + cfg.batch_pairs, n_pairs)
        corrupted = pairs.corrupted[a:b].to(model.device)
        metric = patching.LogitDiff(pairs.answer[a:b], pairs.wrong[a:b], per_example=True)
        with torch.no_grad():
            if store is not None:
                clean_src, extra = store, {"clean_rows": rows[a:b]}  # type: ignore[index]
                clean_logits = bridge(pairs.clean[a:b].to(model.device))
            else:
                clean_logits, clean_src = bridge.run_with_cache(pairs.clean[a:b].to(model.device))
                extra = {}
        per_method = {}
        for method, fn in fns.items():
            res = fn(
                bridge,
                corrupted,
                clean_src,
                metric,
                reduce="none",
                baseline=True,
                memory_budget=cfg.memory_budget,
                progress=cfg.progress and procs.main,
                **extra,
            )
            per_method[method] = res.values.movedim(-1, 0).float().cpu().numpy()  # (pair, *cells)
        parts[i] = (
            per_method,
            res.baseline.float().cpu().numpy(),
            metric(clean_logits).float().cpu().numpy(),
            list(res.axis_names),
            res.patch_type_names,
        )
    for share in procs.all_gather(parts, "every batch of pairs was patched"):
        parts.update(share)
    ordered = [parts[i] for i in range(len(starts))]
    return _Sweeps(
        {m: np.concatenate([p[0][m] for p in ordered]) for m in fns},
        np.concatenate([p[2] for p in ordered]),
        np.concatenate([p[1] for p in ordered]),
        ordered[-1][3],
        ordered[-1][4],
    )


def _correlation(values: dict[str, np.ndarray], corr_v: np.ndarray) -> dict[str, Any]:
    """--method both: attribution.compare of the mean exact and attribution values, and of
    the per-pair effects."""
    # cells no pair's patch changes are equal in both by construction: r is also given without them
    base = corr_v.reshape((-1,) + (1,) * (values["attribution"].ndim - 1))
    changed = (values["attribution"] != base).any(0)
    correlation = attribution.compare(
        values["exact"].mean(0), values["attribution"].mean(0), changed
    )
    # per pair, the effects (value - that pair's corrupted logit diff: the pairs' own offsets would inflate r)
    correlation["pearson_pair_effects"] = attribution.compare(
        values["exact"] - base, values["attribution"] - base
    )["pearson"]
    return correlation


def _attrs(
    cfg: PatchJobConfig,
    job: PairJob,
    row: SweepRow,
    store: ActivationStore | None,
    sweeps: _Sweeps,
    correlation: dict[str, Any] | None,
) -> dict[str, Any]:
    """The attributes every array of the results carries: the run's provenance."""
    source = pair_source(cfg)
    if cfg.pairs is None:
        source["pairs_written_to"] = os.path.abspath(cfg.write_pairs) if cfg.write_pairs else None
    attrs: dict[str, Any] = {
        "sweep": cfg.sweep,
        "metric": "logit difference answer - wrong at the last position",
        "method": cfg.method,
        "model": job.model.info.to_dict(),
        **source,
        "n_pairs": int(job.pairs.clean.shape[0]),
        "clean_source": f"store {store.path}"
        if store is not None
        else "clean forward (run_with_cache)",
        "command_line": cfg.command_line,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if "attribution" in sweeps.values:
        attrs["attribution"] = (
            "first-order estimate of the patched logit difference: corrupted + sum over the "
            "patched slice of (clean - corrupted) * d logit_diff / d activation"
        )
    if correlation is not None:
        attrs["correlation"] = correlation
    if row.kind == "stack":
        attrs["patch_type"] = list(sweeps.type_names or [])
    return attrs


def _write(
    cfg: PatchJobConfig,
    job: PairJob,
    row: SweepRow,
    writer: _Writer,
    sweeps: _Sweeps,
    normalised: dict[str, np.ndarray],
    dims: tuple[str, ...],
    attrs: dict[str, Any],
    correlation: dict[str, Any] | None,
) -> list[str]:
    """Process 0's part: the results' arrays, then the heatmaps (and the scatter plot for
    --method both); the figures written."""
    values, pairs, info, n_pairs = (
        sweeps.values,
        job.pairs,
        job.model.info,
        int(job.pairs.clean.shape[0]),
    )
    norm_doc = (
        "(mean patched - mean corrupted) / (mean clean - mean corrupted): 0 corrupted, 1 clean"
    )
    for method in values:
        prefix = "" if method == "exact" else "attribution_"
        writer(f"{prefix}logit_diff", values[method].astype(np.float32), dims, attrs)
        writer(
            f"{prefix}normalised",
            normalised[method].astype(np.float32),
            dims[1:],
            {**attrs, "normalised": norm_doc},
        )
    writer("clean_logit_diff", sweeps.clean.astype(np.float32), ("pair",), attrs)
    writer("corrupted_logit_diff", sweeps.corrupted.astype(np.float32), ("pair",), attrs)
    writer("clean_tokens", pairs.clean.numpy().astype(np.int32), ("pair", "pos"), attrs)
    writer("corrupted_tokens", pairs.corrupted.numpy().astype(np.int32), ("pair", "pos"), attrs)
    writer.result.finish()

    figures: list[str] = []
    for method in values:
        shown = normalised[method] if cfg.metric == "normalised" else values[method].mean(0)
        figures += heatmaps(
            cfg,
            writer.path,
            shown,
            dims[1:],
            pairs,
            job.model.tokenizer,
            info.name,
            n_pairs,
            sweeps.type_names if row.kind == "stack" else None,
            suffix="" if method == "exact" else ".attribution",
        )
    if correlation is not None:
        figures.append(scatter(cfg, writer.path, normalised, correlation, info.name, n_pairs))
    return figures


def patch_pairs(cfg: PatchJobConfig) -> PatchJobResult:
    """Run one sweep over every pair (exact, attribution or both); write the results,
    the heatmaps and, for both, their correlation and a scatter plot."""
    _check(cfg)
    row = SWEEPS[cfg.sweep]
    job = PairJob.start(cfg)
    store, rows = None, None
    if cfg.store is not None:
        store, fix = job.clean_store(
            cfg, row.site_spec, row.hooks(job.model.info.n_layers), "this sweep reads"
        )
        rows = _store_rows(store, job.pairs.clean, fix)
    writer = _Writer(cfg, store)
    job.write_pairs(cfg)  # every check passed: the pairs are what this run patches

    sweeps = _run_sweeps(cfg, job, row, store, rows)
    values, clean_v, corr_v = sweeps.values, sweeps.clean, sweeps.corrupted
    _check_values(clean_v, corr_v, values)
    normalised = {
        m: (v.mean(0) - corr_v.mean()) / (clean_v.mean() - corr_v.mean()) for m, v in values.items()
    }
    dims = ("pair", *(_DIM_NAMES.get(d, d) for d in sweeps.axis_names))
    correlation = _correlation(values, corr_v) if cfg.method == "both" else None
    attrs = _attrs(cfg, job, row, store, sweeps, correlation)
    figures: list[str] = []
    if job.procs.main:  # one process writes the results and draws the figures
        figures = _write(cfg, job, row, writer, sweeps, normalised, dims, attrs, correlation)
    main = "exact" if "exact" in values else "attribution"
    return PatchJobResult(
        out=writer.path,
        prefix=("results/" if writer.store is not None else "") + writer.prefix,
        figures=figures,
        dims=dims,
        logit_diff=values[main],
        normalised=normalised[main],
        clean_logit_diff=clean_v,
        corrupted_logit_diff=corr_v,
        method=cfg.method,
        attribution=values.get("attribution"),
        attribution_normalised=normalised.get("attribution"),
        correlation=correlation,
    )
