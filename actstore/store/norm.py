"""Exact normalisation statistics for training from a store: the mean activation of
the tokens a loader yields (to subtract) and SAELens's norm scaling factor,
``sqrt(d) / mean_token ||x - mean||_2`` (SAELens estimates it from a sample; here it is
exact over every token the loader yields), so that normalised activations have mean
norm sqrt(d).

The mean comes from the store's own statistics (``store.stats``) when the loader's tokens
are exactly the ones they cover (every row, BOS kept, padding skipped); otherwise, like
the mean norm, which no store holds, from one streaming float64 pass over the store.
Results are cached in memory per (store, site, token set) for the process's lifetime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..stats import Moments
from .base import StoreLike
from .tokens import ChunkReader, RowSelection, row_units

__all__ = ["Normalizer", "normalizers"]

_CACHE: dict[tuple, Normalizer] = {}


@dataclass(frozen=True)
class Normalizer:
    """x -> (x - mean) * scale, per feature vector (token) of one site."""

    hook: str
    mean: np.ndarray  # float64 (*feature); zeros when not centring
    scale: float  # 1.0 when not scaling
    n_tokens: int

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Back to the store's units: y / scale + mean (e.g. an SAE's reconstruction)."""
        return y / self.scale + self.mean


def normalizers(
    store: StoreLike,
    hooks: Sequence[str],
    rows: RowSelection,
    skip_bos: bool,
    skip_padding: bool,
    center: bool,
    scale: bool,
    num_workers: int = 4,
    progress: bool = True,
) -> dict[str, Normalizer]:
    """The :class:`Normalizer` of each hook over the kept tokens of ``rows``."""
    key = (store.path, *rows.key(), skip_bos, skip_padding, center, scale)
    todo = [h for h in hooks if (key, h) not in _CACHE]
    if todo:
        means = {h: np.zeros(store.meta.site(h).shape[2:]) for h in todo}
        counts = dict.fromkeys(todo, 0)
        stats_cover = rows.key() == [0, store.n_rows] and not skip_bos and skip_padding
        if center and stats_cover:
            for h in todo:
                m = store.stats(h)
                means[h], counts[h] = m.mean, m.count
        elif center:
            moments = _pass(
                store, todo, rows, skip_bos, skip_padding, num_workers, progress, "mean", None
            )
            means = {h: m.mean for h, m in moments.items()}
            counts = {h: m.count for h, m in moments.items()}
        factors = dict.fromkeys(todo, 1.0)
        if scale:
            sums = _pass(
                store, todo, rows, skip_bos, skip_padding, num_workers, progress, "norm", means
            )
            for h, (total, n) in sums.items():
                d = int(np.prod(store.meta.site(h).shape[2:]))
                factors[h], counts[h] = float(np.sqrt(d) / (total / n)), n
        for h in todo:
            _CACHE[key, h] = Normalizer(h, means[h], factors[h], counts[h])
    return {h: _CACHE[key, h] for h in hooks}


def _pass(
    store: StoreLike,
    hooks: list[str],
    rows: RowSelection,
    skip_bos: bool,
    skip_padding: bool,
    num_workers: int,
    progress: bool,
    what: str,
    means: dict[str, np.ndarray] | None,
) -> dict:
    """One streaming read of ``hooks`` over ``rows``, in store order: the float64 Moments
    (what="mean") or the (sum of ||x - mean||, count) (what="norm") of the kept tokens."""

    def per_unit(unit: slice, acts: dict[str, np.ndarray]) -> dict:
        keep = rows.keep(store, unit, skip_bos, skip_padding)
        out: dict[str, Any] = {}
        for h, x in acts.items():
            x = x[keep]  # (token, *feature)
            if what == "mean":
                out[h] = Moments.of(x)
            else:
                d = x.reshape(len(x), -1).astype(np.float64) - means[h].reshape(-1)  # type: ignore[index]
                out[h] = (float(np.sqrt(np.einsum("ij,ij->i", d, d)).sum()), len(x))
        return out

    units = row_units(store, rows.span)
    reader = ChunkReader(store, hooks, num_workers, transform=per_unit)
    total: dict = {
        h: Moments.empty(store.meta.site(h).shape[2:]) if what == "mean" else (0.0, 0)
        for h in hooks
    }
    bar = tqdm(
        total=len(units),
        desc=f"normalisation: {'mean' if what == 'mean' else 'mean norm'}",
        unit="chunk",
        disable=not progress,
        leave=False,
    )
    for _, got in reader(units):
        for h, v in got.items():
            total[h] = (
                total[h].merge(v) if what == "mean" else (total[h][0] + v[0], total[h][1] + v[1])
            )
        bar.update()
    bar.close()
    return total
