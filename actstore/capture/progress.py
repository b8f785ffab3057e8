"""The caching progress bar: rows of the store, with tokens/s and MB/s.

In a multi-process run, rank 0's bar shows the whole run: the rows of every shard
marked done by any process (the manifest, polled at most every ``POLL_S``
seconds), or its own rows if that is more, so the rate is the global rate."""

from __future__ import annotations

import time

import numpy as np
import zarr
from tqdm.auto import tqdm

from ..store import Layout

__all__ = ["Progress"]

POLL_S = 2.0


class Progress:
    def __init__(
        self,
        layout: Layout,
        rows_before: int,
        row_mb: float,
        seq_len: int,
        done: zarr.Array | None,
        on: bool,
    ):
        self.bar = tqdm(
            total=layout.n_rows,
            initial=rows_before,
            unit="row",
            desc="caching",
            disable=not on,
            dynamic_ncols=True,
        )
        self.layout, self.before, self.row_mb, self.seq_len, self.done = (
            layout,
            rows_before,
            row_mb,
            seq_len,
            done,
        )
        self.own, self.seen, self.n = 0, rows_before, rows_before  # n: the rows shown
        self.t0 = self.polled = time.perf_counter()

    def update(self, rows: int) -> None:
        """``rows`` more rows computed by this process."""
        self.own += rows
        now = time.perf_counter()
        if self.done is not None and now - self.polled > POLL_S:
            flags = np.asarray(self.done[:])
            self.seen = sum(
                b - a for a, b in (self.layout.shard_rows(int(k)) for k in np.flatnonzero(flags))
            )
            self.polled = now
        n = max(self.before + self.own, self.seen)
        self.bar.update(n - self.n)
        self.n = n
        dt = max(now - self.t0, 1e-9)
        new = n - self.before
        self.bar.set_postfix_str(
            f"{new * self.seq_len / dt:,.0f} tok/s, {new * self.row_mb / dt:,.1f} MB/s",
            refresh=False,
        )

    def close(self) -> None:
        self.bar.close()
