"""One rank's batches of an epoch, on the host: each window's read units (read ahead by a
:class:`ChunkReader`'s threads) flattened to their kept tokens, gathered in the window's
shuffled order (one gather per array, into pinned memory when the batches go to a GPU)
and cut into batches back to back; a window's rest is carried into the next window, so
only the epoch's last batch may be short."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from .base import StoreLike
from .epoch import EpochPlan, Window
from .tokens import ChunkReader, RowSelection

__all__ = ["INDEX", "WindowBatches"]

INDEX = ("row", "pos")  # every batch's index arrays, beside its sites


@dataclass(frozen=True)
class WindowBatches:
    """The host batches of an :class:`actstore.store.loader.ActivationLoader` with these
    settings, called with an epoch's plan and the tokens already yielded."""

    store: StoreLike
    hooks: list[str]
    rows: RowSelection
    units: list[slice]  # the read units, as the plan's windows number them
    skip_bos: bool
    skip_padding: bool
    shuffle: bool
    batch_size: int
    pin: bool  # gather into pinned memory: the device is a GPU
    num_workers: int  # read threads
    prefetch: int | None

    def __call__(
        self, plan: EpochPlan, skip_tokens: int
    ) -> Generator[dict[str, torch.Tensor], None, None]:
        """Batches on the host (pinned when the device is a GPU): the windows' shuffled
        tokens back to back, after the first ``skip_tokens``; the last one may be short."""
        windows = plan.windows(skip_tokens)
        reader = ChunkReader(
            self.store, self.hooks, self.num_workers, self.prefetch, transform=self.tokens_of
        )
        parts = reader([self.units[u] for w in windows for u in w.units])
        bs, rest = self.batch_size, None
        try:
            for w in windows:
                got = self.window([next(parts)[1] for _ in w.units], w)
                if rest is not None:
                    need = bs - len(rest["row"])
                    rest = {k: torch.cat([rest[k], v[:need]]) for k, v in got.items()}
                    got = {k: v[need:] for k, v in got.items()}
                    if len(rest["row"]) < bs:
                        continue
                    yield {k: v.pin_memory() for k, v in rest.items()} if self.pin else rest
                    rest = None
                n = len(got["row"])
                for i in range(0, n - bs + 1, bs):
                    yield {k: v[i : i + bs] for k, v in got.items()}
                if n % bs:
                    rest = {k: v[n - n % bs :] for k, v in got.items()}
            if rest is not None:
                yield {k: v.pin_memory() for k, v in rest.items()} if self.pin else rest
        finally:
            parts.close()

    def tokens_of(self, unit: slice, acts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One unit's (row, pos, ...) arrays as (row*pos, ...) views, with the flat indices
        of its kept positions ("keep") and their row and pos. Runs in a read thread."""
        keep = self.rows.keep(self.store, unit, self.skip_bos, self.skip_padding)
        r, p = np.nonzero(keep)
        out = {h: a.reshape(-1, *a.shape[2:]) for h, a in acts.items()}
        out["keep"] = np.flatnonzero(keep)
        out["row"], out["pos"] = (r + unit.start).astype(np.int64), p.astype(np.int64)
        return out

    def window(self, parts: list[dict[str, np.ndarray]], w: Window) -> dict[str, torch.Tensor]:
        """The window's kept tokens in its shuffled order, without the first ``w.skip``:
        one gather per array, into pinned memory when the device is a GPU."""
        order = (
            np.random.default_rng(list(w.key)).permutation(w.n_tokens)
            if self.shuffle
            else np.arange(w.n_tokens)
        )
        picked = torch.from_numpy(order[w.skip :])
        offsets = np.cumsum([0] + [len(p[self.hooks[0]]) for p in parts[:-1]])
        keep = torch.from_numpy(np.concatenate([p["keep"] + o for p, o in zip(parts, offsets)]))[
            picked
        ]
        out = {}
        for k in [*self.hooks, *INDEX]:
            src = torch.from_numpy(
                np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k]
            )
            idx = picked if k in INDEX else keep
            dst = torch.empty((len(idx), *src.shape[1:]), dtype=src.dtype, pin_memory=self.pin)
            out[k] = torch.index_select(src, 0, idx, out=dst)
        return out
