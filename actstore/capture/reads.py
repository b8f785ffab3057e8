"""Where each process reads its rows from: the corpus plan.

The process that creates the store writes the plan (``plan``: each shard's start in
the source, then the end of the last row; see corpus/plan.py), from the one pass
over the corpus that also counted its rows. Every process then reads only its own
shards: each run of consecutive shards it owns is one read, which seeks to the run's
first shard and tokenises no document past the run's last one. Where the plan does
not know a start (a streamed hub dataset), or the store has no plan (made by an
older version, or its plan object is damaged), the process reads sequentially from
the first shard still to do, which it finds from the rows done before it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from ..corpus import (
    Checkpoint,
    CorpusScan,
    CorpusSpec,
    RowBlock,
    RowReader,
    plan_checkpoint,
    stop_after,
    synthetic_plan,
    unknown_plan,
)
from ..store.format import Layout
from ..store.typed import array_at

__all__ = ["Read", "make_plan", "plan_reads", "read_shards"]


@dataclass(frozen=True)
class Read:
    """One reader: from ``start``, tokenising no document from ``stop`` on (None:
    no limit), yielding the rows of ``shards`` (consecutive) in order."""

    start: Checkpoint
    stop: int | None
    shards: list[int]


def make_plan(spec: CorpusSpec, scanned: CorpusScan | None, layout: Layout) -> np.ndarray:
    """The plan array of a new store: from the scan of a local source, by computation
    for synthetic rows, and unknown past row 0 for a source not scanned (hub)."""
    boundaries = [layout.shard_rows(k)[0] for k in range(layout.n_shards)] + [layout.n_rows]
    if spec.kind == "synthetic":
        return synthetic_plan(boundaries)
    return unknown_plan(boundaries) if scanned is None else scanned.plan(boundaries)


def plan_reads(
    group: zarr.Group, spec: CorpusSpec, layout: Layout, todo: Sequence[int], mine: Sequence[int]
) -> list[Read]:
    """The reads that yield the shards ``mine`` (a non-empty part of ``todo``)."""
    owned = sorted(mine)
    runs: list[list[int]] = []
    for k in owned:
        if runs and runs[-1][-1] == k - 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    plan = _read_plan(group)
    if plan is not None:
        starts = [plan_checkpoint(plan, run[0]) for run in runs]
        if all(s is not None for s in starts):
            ends = [plan_checkpoint(plan, run[-1] + 1) for run in runs]
            return [
                Read(s, None if e is None else stop_after(e), run)  # type: ignore[arg-type]
                for s, e, run in zip(starts, ends, runs)
            ]
    first = int(todo[0])
    return [Read(_start(group, spec, layout, first), None, list(range(first, owned[-1] + 1)))]


def read_shards(
    group: zarr.Group,
    spec: CorpusSpec,
    tokenizer: Any,
    layout: Layout,
    todo: Sequence[int],
    mine: Collection[int],
) -> Iterator[tuple[int, RowBlock]]:
    """(k, rows of shard k) for each shard k in ``mine``, in order."""
    for read in plan_reads(group, spec, layout, todo, sorted(mine)):
        reader = RowReader(spec, tokenizer, read.start, read.stop)
        for k in read.shards:
            a, b = layout.shard_rows(k)
            rows = reader.take(b - a)
            if k in mine:
                yield k, rows


def _read_plan(group: zarr.Group) -> np.ndarray | None:
    """The store's plan; None when it has none, or when its object fails its checksum
    (the sequential read needs no plan, only the rows done)."""
    if "plan" not in group:
        return None
    try:
        return np.asarray(array_at(group, "plan")[...])
    except ValueError as e:
        if "checksum" not in str(e):
            raise
        return None


def _start(group: zarr.Group, spec: CorpusSpec, layout: Layout, k: int) -> Checkpoint:
    """Where shard k's first row starts in the source, from the done rows before it."""
    a, _ = layout.shard_rows(k)
    if a == 0:
        return Checkpoint()
    if spec.packing == "document":
        return Checkpoint(row=a, doc=a)
    doc, pos = (int(np.asarray(array_at(group, name)[a - 1, -1])) for name in ("doc", "doc_pos"))
    return Checkpoint(row=a, doc=doc, item=pos + 1)
