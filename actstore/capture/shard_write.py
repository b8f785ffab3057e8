"""Writing one shard of a caching run: index arrays, activations and their running
statistics in parallel worker threads, then the stats row, then `done`.

Order (the fault points of :mod:`actstore._faults` in brackets): [before_write]
index arrays, [mid_write] every site's activations and moments at once, the stats
row, [before_done] ``done[k]`` [after_done]. Every object is written whole and, when
durable, fsynced before ``done[k]`` is written, so a crash at any point leaves the
shard not done and a resume rewrites it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from .. import _faults
from ..corpus import RowBlock
from ..sites import SiteShape
from ..stats import Moments
from ..store.format import INDEX_ARRAYS, Layout, clear_shard
from ..store.typed import array_at, attrs_of
from .shardio import encoder_for, write_rows
from .staging import ShardBuffers

__all__ = ["Shard", "ShardWrite", "shard_moments"]


@dataclass
class Shard:
    k: int
    rows: RowBlock
    bufs: ShardBuffers  # the shard's activations, staged on the host
    n_rows: int


def shard_moments(buf: np.ndarray, shape: SiteShape, mask: np.ndarray | None) -> Moments:
    """Moments over (row, pos) of one shard of a site, in fixed-size pieces."""
    axis = shape.dims.index("pos") + 1
    x = np.moveaxis(buf, axis, 1)  # (row, pos, *feature)
    if mask is not None and x.shape[1] == mask.shape[1] - 1:
        mask = mask[:, 1:]  # loss at pos predicts token pos + 1: real where that token is
    total = Moments.empty(shape.feature_shape or ())
    for r in range(0, len(x), 8):
        piece = x[r : r + 8]
        piece = piece[mask[r : r + 8]] if mask is not None else piece.reshape(-1, *piece.shape[2:])
        total = total.merge(Moments.of(piece))
    return total


_NICE = os.environ.get("ACTSTORE_WRITER_NICE", "1") != "0"  # 0: writer threads keep normal priority


def yield_cpu() -> None:
    """Lowest CPU priority for the calling thread (Linux; elsewhere a no-op). When the
    model runs on the CPU, the writer's threads then use the cores the forward leaves
    idle instead of preempting its threads: a preempted thread stalls the whole
    parallel matrix product it belongs to. A writer that falls behind still gets the
    CPU, because the forward then waits for a free buffer set."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


class ShardWrite:
    """Writes whole shards of a store; ``threads`` workers encode and write arrays at once
    (``background``: at the lowest CPU priority, for runs whose model is on the CPU)."""

    def __init__(
        self,
        group: zarr.Group,
        path: str,
        layout: Layout,
        shapes: Mapping[str, SiteShape],
        durable: bool,
        clear_first: bool,
        threads: int,
        release: Callable[[ShardBuffers], None],
        background: bool = False,
    ):
        self.group, self.path, self.layout, self.shapes, self.durable = (
            group,
            path,
            layout,
            shapes,
            durable,
        )
        self.clear_first = (
            clear_first  # resuming: an unfinished shard may hold damaged or partial objects
        )
        self.partials = array_at(group, "stats/partials") if "stats/partials" in group else None
        self.columns: dict[str, Any] = (
            attrs_of(self.partials)["columns"] if self.partials is not None else {}
        )
        names = [n for n in INDEX_ARRAYS if n in group] + [f"acts/{h}" for h in shapes]
        # the arrays with one shard per write
        self.arrays = {name: array_at(group, name) for name in names}
        self.small = {
            name: array_at(group, name) for name in ("stats/partials", "done") if name in group
        }
        self.encoders = {
            name: encoder_for(arr) for name, arr in {**self.arrays, **self.small}.items()
        }
        self.pool = ThreadPoolExecutor(
            max(1, threads),
            thread_name_prefix="actstore-write",
            initializer=yield_cpu if background and _NICE else None,
        )
        self.release = release

    def describe(self, shard: Shard) -> str:
        a, b = self.layout.shard_rows(shard.k)
        return f"shard {shard.k} (rows {a}..{b - 1}) of '{self.path}'"

    def _write(self, name: str, k: int, data: np.ndarray) -> None:
        arr = self.arrays[name] if name in self.arrays else self.small[name]
        write_rows(arr, self.path, k, data, self.durable, self.encoders[name])

    def _all(self, jobs: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
        """Run the jobs in the worker threads; the first failure is raised."""
        futures = [self.pool.submit(fn, *args) for fn, args in jobs]
        return [f.result() for f in futures]

    def __call__(self, shard: Shard) -> None:
        k, rows = shard.k, shard.rows
        acts = shard.bufs.arrays(shard.n_rows)  # waits for the device copies, if any
        _faults.point("before_write", k)
        if self.clear_first:
            for arr in [*self.arrays.values(), *self.small.values()]:
                clear_shard(arr, k)
        self._all(
            [
                (self._write, (name, k, getattr(rows, name)))
                for name in INDEX_ARRAYS
                if name in self.arrays
            ]
        )
        _faults.point("mid_write", k)
        # each site's write, then its moments: the threads interleave the disk's waits and the
        # moments' arithmetic instead of doing all of one before the other
        futures: dict[tuple[str, str], Any] = {}
        for hook, buf in acts.items():
            futures["write", hook] = self.pool.submit(self._write, f"acts/{hook}", k, buf)
            if hook in self.columns:
                futures["moments", hook] = self.pool.submit(
                    shard_moments, buf, self.shapes[hook], rows.mask
                )
        results = {key: f.result() for key, f in futures.items()}  # the first failure is raised
        if self.partials is not None:
            vec = np.zeros((1, self.partials.shape[1]))
            for hook, (offset, _) in self.columns.items():
                m = results["moments", hook]
                packed = m.pack()
                vec[0, offset : offset + len(packed)] = packed
            self._write("stats/partials", k, vec)
        self.release(shard.bufs)
        _faults.point("before_done", k)
        self._write("done", k, np.ones(1, bool))
        _faults.point("after_done", k)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
