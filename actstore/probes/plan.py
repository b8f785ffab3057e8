"""The plan of a probe run shared by both kinds: the sites, the target, the split, the
standardisation, and the streaming reads of the store in units of rows. Under torchrun /
accelerate each process reads its own share of the units (round-robin, parallel.Group)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from ..parallel import Group, single
from ..store.loader import ChunkReader, TokenSite, keep_positions, row_units
from .labels import Target

if TYPE_CHECKING:
    from ..store import ActivationStore

__all__ = ["Plan", "groups"]

_UNIT_BYTES = 64 * 2**20  # rows read per unit: about this many bytes of all sites together


@dataclass
class Plan:
    store: ActivationStore
    sites: list[TokenSite]
    target: Target
    test_rows: np.ndarray  # bool (row,)
    mean: dict[str, np.ndarray]  # float64 (feature,) flattened; zeros when not standardising
    scale: dict[str, np.ndarray]  # float64 (feature,); ones when not standardising
    skip_bos: bool
    classes: np.ndarray | None = None  # int64 (class,) sorted, logistic only
    class_w: np.ndarray | None = None  # float64 (class,) per-class sample weight
    procs: Group = field(default_factory=single)  # this process's place in a launched run

    def units(self, sites: Sequence[TokenSite]) -> list[slice]:
        """This process's share of the read units (all of them in a single process)."""
        row_bytes = sum(s.n_features for s in sites) * self.store.layout.seq_len * 4
        rows = max(1, _UNIT_BYTES // max(row_bytes, 1))
        if self.procs.distributed:  # several units per process, so the shares balance
            rows = min(rows, max(1, self.store.n_rows // (4 * self.procs.world)))
        units = row_units(self.store, rows_per_unit=rows)
        return [units[i] for i in self.procs.owned(range(len(units)))]

    def select(self, unit: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Kept, labelled positions of a unit: (row, pos) indices (2, n), labels (n,) (class
        indices for logistic), is_test (n,)."""
        keep = keep_positions(self.store, unit, self.skip_bos, skip_padding=True)
        y = self.target.labels(self.store, unit)
        if self.classes is None:  # regression: negative integer labels mean "none", as for classes
            y = np.where(y >= 0, y, np.nan) if y.dtype.kind != "f" else y
            keep &= ~np.isnan(y)
        else:
            k = np.clip(np.searchsorted(self.classes, y), 0, len(self.classes) - 1)
            ok = self.classes[k] == y
            keep &= ok
            y = np.where(ok, k, -1)
        r, p = np.nonzero(keep)
        return np.stack([r, p]), y[r, p], self.test_rows[unit][r]

    def reader(
        self, sites: Sequence[TokenSite], dtype: type, num_workers: int
    ) -> Callable[[], Iterator[Any]]:
        """A function that streams the store once: yields (X {hook: (n, F) standardised}, y (n,), is_test (n,))."""

        def transform(
            unit: slice, acts: dict[str, np.ndarray]
        ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
            (r, p), y, test = self.select(unit)
            xs = []
            for s in sites:
                x = acts[s.hook][r, p].reshape(len(r), s.n_features).astype(dtype)
                xs.append((x - self.mean[s.hook].astype(dtype)) / self.scale[s.hook].astype(dtype))
            return xs, y, test

        reader = ChunkReader(self.store, [s.hook for s in sites], num_workers, transform=transform)
        units = self.units(sites)
        return lambda: (got for _, got in reader(units))

    def read_all(self, dtype: type, num_workers: int, progress: bool, desc: str) -> Iterator[Any]:
        """One pass over every site of the plan, as ``reader`` yields it, with a progress bar
        (on the main process) counting the units read."""
        return tqdm(
            self.reader(self.sites, dtype, num_workers)(),
            total=len(self.units(self.sites)),
            desc=desc,
            unit="block",
            disable=not (progress and self.procs.main),
        )


def groups(sites: Sequence[TokenSite]) -> list[list[TokenSite]]:
    """Sites with the same feature count, batched together."""
    by: dict[int, list[TokenSite]] = {}
    for s in sites:
        by.setdefault(s.n_features, []).append(s)
    return list(by.values())
