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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError, StoreMismatchError
from ..models import as_loaded, check_processes
from ..parallel import group_for
from ..store import ActivationStore, ResultWriter, is_store
from . import attribution, sweeps as patching, tasks
from .config import METHODS, SWEEPS, PatchJobConfig
from .figures import heatmaps, scatter
from .clean import store_rows as _store_rows
from .pairs import check_source as _check_source, clean_store_fix, read_pairs, task_pairs
from .table import SweepRow

__all__ = ["PatchJobConfig", "PatchJobResult", "SWEEPS", "METHODS", "patch_pairs"]

_DIM_NAMES = {"head_index": "head"}  # one vocabulary for dimensions: layer pos head dest_pos src_pos


@dataclass
class PatchJobResult:
    out: str  # the results group (a store's path when written under its results/)
    prefix: str  # where this sweep's arrays are inside it
    figures: list[str]
    dims: tuple[str, ...]  # of the per-pair values, 'pair' first
    logit_diff: np.ndarray  # (pair, *cells): exact patching's (attribution's when --method attribution)
    normalised: np.ndarray  # (*cells), likewise
    clean_logit_diff: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    corrupted_logit_diff: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    method: str = "exact"
    attribution: np.ndarray | None = field(repr=False, default=None)  # (pair, *cells), estimated logit diffs
    attribution_normalised: np.ndarray | None = field(repr=False, default=None)  # (*cells)
    correlation: dict[str, Any] | None = None  # method both: attribution.compare of the two


def _check_store_sites(store: ActivationStore, row: SweepRow, n_layers: int, fix: str) -> None:
    have = set(store.sites)
    missing = [h for h in row.hooks(n_layers) if h not in have]
    if missing:
        raise StoreMismatchError(
            f"Store '{store.path}' lacks {len(missing)} of the sites this sweep reads (first: {missing[0]}). {fix}")


class _Writer:
    """The sweep's result (actstore.store.results): under a store's results/, or in a
    results group of its own. Refuses, before any work, to replace a sweep's results
    without overwrite; an --overwrite run with another --method leaves none of the
    previous run's arrays beside its own."""

    def __init__(self, cfg: PatchJobConfig, store: ActivationStore | None):
        out = cfg.out
        if out is not None and store is not None and os.path.abspath(out) == os.path.abspath(store.path):
            out = None
        if out is None and store is not None:
            self.store: ActivationStore | None = store
        elif out is not None and is_store(out):
            self.store = ActivationStore.open(out)
        else:
            self.store = None
        self.path = self.store.path if self.store is not None else (out or _default_out(cfg))
        self.prefix = f"patching/{cfg.sweep}"
        how = dict(what=f"results of the {cfg.sweep} sweep", fix="pass --overwrite to replace them, or --out another path",
                   unwritable_fix="pass --out a path you can write")
        self.result = (ResultWriter.for_store(self.store, self.prefix, cfg.overwrite, **how) if self.store is not None
                       else ResultWriter(self.path, self.prefix, cfg.overwrite, **how))

    def __call__(self, name: str, data: np.ndarray, dims: Sequence[str], attrs: dict[str, Any]) -> None:
        self.result.write(name, data, dims, attrs)


def _check_separated(clean: np.ndarray, corrupted: np.ndarray, values: dict[str, np.ndarray]) -> None:
    """Refuse (before anything is written) results that are not numbers, or a normalised
    effect whose denominator, mean clean - mean corrupted logit difference, is within
    1e-4 of the largest logit difference of 0: noise divided by noise."""
    if not all(np.isfinite(v).all() for v in (clean, corrupted, *values.values())):
        raise ConfigError("The model gave logit differences that are not finite (overflow in float16?); nothing was "
                          "written. Pass --dtype float32.")
    gap, scale = float(clean.mean() - corrupted.mean()), float(max(np.abs(clean).max(), np.abs(corrupted).max()))
    if abs(gap) <= 1e-4 * scale:
        raise ConfigError(f"The mean clean and corrupted logit differences are the same ({clean.mean():.6g} and "
                          f"{corrupted.mean():.6g}), so the normalised effect is 0 / 0; nothing was written. Use pairs "
                          "whose clean prompts the model separates from the corrupted ones (a pair and its swap "
                          "cancel out).")


def _default_out(cfg: PatchJobConfig) -> str:
    stem = os.path.splitext(cfg.pairs)[0] if cfg.pairs else (cfg.task or "patch")
    return f"{stem}.patch.zarr"


def patch_pairs(cfg: PatchJobConfig) -> PatchJobResult:
    """Run one sweep over every pair (exact, attribution or both); write the results,
    the heatmaps and, for both, their correlation and a scatter plot."""
    from ..capture import cache

    if cfg.sweep not in SWEEPS:
        raise ConfigError(f"Unknown sweep '{cfg.sweep}'; expected one of {', '.join(SWEEPS)}.")
    if cfg.metric not in ("normalised", "logit_diff"):
        raise ConfigError(f"Unknown metric '{cfg.metric}'; expected normalised or logit_diff.")
    if cfg.method not in METHODS:
        raise ConfigError(f"Unknown method '{cfg.method}'; expected one of {', '.join(METHODS)}.")
    if cfg.batch_pairs < 1:
        raise ConfigError(f"batch_pairs must be at least 1, got {cfg.batch_pairs}.")
    if patching.PatchingResult is None:  # per-pair values and baselines: TransformerLens 4's result type
        from ..compat import versions

        raise ConfigError(f"actstore patch needs transformer_lens>=4 (installed: {versions()['transformer-lens']}) for "
                          "its per-pair results; pip install 'transformer_lens>=4,<4.4', or call actstore.patching's "
                          "sweeps from Python, whose default tensor return works with TransformerLens 3.")
    _check_source(cfg)
    row = SWEEPS[cfg.sweep]
    check_processes(cfg.model)
    procs = group_for(cfg.device)  # under torchrun / accelerate: the batches of pairs are shared out
    model = as_loaded(cfg.model, cfg.dtype, procs.device or cfg.device, cfg.model_revision)
    bridge, info = model.bridge, model.info
    generated: list[tasks.PromptPair] = []
    if cfg.pairs is not None:
        pairs = read_pairs(cfg.pairs, model.tokenizer)
    else:
        pairs, generated = task_pairs(cfg, model.tokenizer)
    n_pairs, n_pos = pairs.clean.shape
    if n_pos > info.n_ctx:
        raise ConfigError(f"The prompts are {n_pos} tokens, beyond the model's context of {info.n_ctx}.")

    store = None
    if cfg.store is not None:
        if procs.on_main(lambda: not os.path.exists(cfg.store), "checking the store"):  # one answer for every rank
            if cfg.progress and procs.main:
                print(f"caching the {n_pairs} clean prompts into {cfg.store}")
            cache(out=cfg.store, model=model, dataset=pairs.clean_text, packing="document", seq_len=n_pos,
                  sites=row.site_spec, dtype=info.dtype, device=model.device,
                  model_revision=cfg.model_revision, progress=cfg.progress,
                  command_line=f"{cfg.command_line} (clean prompts)" if cfg.command_line else None)
        store = ActivationStore.open(cfg.store)
        from .clean import check_store_model

        check_store_model(store, bridge)
        fix = clean_store_fix(cfg, cfg.store, row.site_spec, n_pos, info.dtype)
        _check_store_sites(store, row, info.n_layers, fix)
        rows = _store_rows(store, pairs.clean, fix)
    writer = _Writer(cfg, store)
    if cfg.write_pairs and procs.main:  # every check passed: the pairs are what this run patches
        tasks.write_pairs(generated, cfg.write_pairs)

    fns = {m: getattr(patching if m == "exact" else attribution, row.function)
           for m in (("exact", "attribution") if cfg.method == "both" else (cfg.method,))}
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
                clean_src, extra = store, {"clean_rows": rows[a:b]}
                clean_logits = bridge(pairs.clean[a:b].to(model.device))
            else:
                clean_logits, clean_src = bridge.run_with_cache(pairs.clean[a:b].to(model.device))
                extra = {}
        per_method = {}
        for method, fn in fns.items():
            res = fn(bridge, corrupted, clean_src, metric, reduce="none", baseline=True,
                     memory_budget=cfg.memory_budget, progress=cfg.progress and procs.main, **extra)
            per_method[method] = res.values.movedim(-1, 0).float().cpu().numpy()  # (pair, *cells)
        parts[i] = (per_method, res.baseline.float().cpu().numpy(), metric(clean_logits).float().cpu().numpy(),
                    list(res.axis_names), res.patch_type_names)
    for share in procs.all_gather(parts, "every batch of pairs was patched"):
        parts.update(share)
    ordered = [parts[i] for i in range(len(starts))]
    per_pair = {m: [p[0][m] for p in ordered] for m in fns}
    corr_ld, clean_ld = [p[1] for p in ordered], [p[2] for p in ordered]
    axis_names, type_names = ordered[-1][3], ordered[-1][4]
    values = {m: np.concatenate(v) for m, v in per_pair.items()}
    clean_v, corr_v = np.concatenate(clean_ld), np.concatenate(corr_ld)
    _check_separated(clean_v, corr_v, values)
    normalised = {m: (v.mean(0) - corr_v.mean()) / (clean_v.mean() - corr_v.mean()) for m, v in values.items()}
    dims = ("pair", *(_DIM_NAMES.get(d, d) for d in axis_names))

    correlation = None
    if cfg.method == "both":
        # cells no pair's patch changes are equal in both by construction: r is also given without them
        base = corr_v.reshape((-1,) + (1,) * (values["attribution"].ndim - 1))
        changed = (values["attribution"] != base).any(0)
        correlation = attribution.compare(values["exact"].mean(0), values["attribution"].mean(0), changed)
        # per pair, the effects (value - that pair's corrupted logit diff: the pairs' own offsets would inflate r)
        correlation["pearson_pair_effects"] = attribution.compare(values["exact"] - base,
                                                                  values["attribution"] - base)["pearson"]
    source = ({"pairs": os.path.abspath(cfg.pairs)} if cfg.pairs is not None else
              {"task": cfg.task, "seed": cfg.seed, "facts": os.path.abspath(cfg.facts) if cfg.facts else None,
               "pairs_written_to": os.path.abspath(cfg.write_pairs) if cfg.write_pairs else None})
    attrs = {"sweep": cfg.sweep, "metric": "logit difference answer - wrong at the last position",
             "method": cfg.method, "model": info.to_dict(), **source, "n_pairs": int(n_pairs),
             "clean_source": f"store {store.path}" if store is not None else "clean forward (run_with_cache)",
             "command_line": cfg.command_line, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if "attribution" in values:
        attrs["attribution"] = ("first-order estimate of the patched logit difference: corrupted + sum over the "
                                "patched slice of (clean - corrupted) * d logit_diff / d activation")
    if correlation is not None:
        attrs["correlation"] = correlation
    if row.kind == "stack":
        attrs["patch_type"] = list(type_names or [])
    figures: list[str] = []
    if procs.main:  # one process writes the results and draws the figures
        norm_doc = "(mean patched - mean corrupted) / (mean clean - mean corrupted): 0 corrupted, 1 clean"
        for method in values:
            prefix = "" if method == "exact" else "attribution_"
            writer(f"{prefix}logit_diff", values[method].astype(np.float32), dims, attrs)
            writer(f"{prefix}normalised", normalised[method].astype(np.float32), dims[1:], {**attrs, "normalised": norm_doc})
        writer("clean_logit_diff", clean_v.astype(np.float32), ("pair",), attrs)
        writer("corrupted_logit_diff", corr_v.astype(np.float32), ("pair",), attrs)
        writer("clean_tokens", pairs.clean.numpy().astype(np.int32), ("pair", "pos"), attrs)
        writer("corrupted_tokens", pairs.corrupted.numpy().astype(np.int32), ("pair", "pos"), attrs)
        writer.result.finish()

        for method in values:
            shown = normalised[method] if cfg.metric == "normalised" else values[method].mean(0)
            figures += heatmaps(cfg, writer.path, shown, dims[1:], pairs, model.tokenizer, info.name, n_pairs,
                                type_names if row.kind == "stack" else None,
                                suffix="" if method == "exact" else ".attribution")
        if correlation is not None:
            figures.append(scatter(cfg, writer.path, normalised, correlation, info.name, n_pairs))
    main = "exact" if "exact" in values else "attribution"
    return PatchJobResult(out=writer.path, prefix=("results/" if writer.store is not None else "") + writer.prefix,
                          figures=figures, dims=dims, logit_diff=values[main], normalised=normalised[main],
                          clean_logit_diff=clean_v, corrupted_logit_diff=corr_v, method=cfg.method,
                          attribution=values.get("attribution"), attribution_normalised=normalised.get("attribution"),
                          correlation=correlation)


