"""Token-level reading of a store, shared by the training loader, its normalisation
pass and the probes: which sites hold one vector per token, which rows and positions to
use, read units on inner-chunk boundaries, and a threaded reader of units in a given order."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np

from ..errors import ConfigError, RowIndexError
from .base import StoreLike
from .format import read_checked

__all__ = [
    "TokenSite",
    "token_sites",
    "keep_positions",
    "RowSelection",
    "select_rows",
    "row_units",
    "read_units",
    "ChunkReader",
]


@dataclass(frozen=True)
class TokenSite:
    """A site with one value per token: stored as (row, pos, *feature)."""

    hook: str
    layer: int | None
    feature_dims: tuple[str, ...]  # e.g. ("d_model",) or ("head", "d_head")
    feature_shape: tuple[int, ...]

    @property
    def n_features(self) -> int:
        return int(np.prod(self.feature_shape))


def token_sites(store: StoreLike, hooks: Sequence[str]) -> list[TokenSite]:
    """The token-level description of ``hooks``; attention patterns (two position
    axes) are refused."""
    out = []
    for hook in hooks:
        s = store.meta.site(hook)
        dims, shape = list(s.dims), list(s.shape)
        if (
            len(dims) < 3
            or dims[1] != "pos"
            or "pos" in dims[2:]
            or any(d.endswith("_pos") for d in dims)
        ):
            raise ConfigError(
                f"Site {hook} is stored as ({', '.join(dims)}), not one vector per token; "
                "probes and loaders read (row, pos, ...) sites: pass one such as resid_post or z."
            )
        out.append(TokenSite(hook, s.layer, tuple(dims[2:]), tuple(shape[2:])))
    return out


def keep_positions(
    store: StoreLike, rows: slice, skip_bos: bool = True, skip_padding: bool = True
) -> np.ndarray:
    """bool (row, pos): positions to use. Every row starts with BOS at pos 0; padding
    is where ``store.mask()`` is False (per-document stores)."""
    keep = store.mask(rows, check_done=False) if skip_padding else None
    a, b, _ = rows.indices(store.n_rows)
    if keep is None:
        keep = np.ones((b - a, store.layout.seq_len), bool)
    if skip_bos:
        keep[:, 0] = False
    return keep


RowsArg = slice | range | int | Sequence[int] | np.ndarray | None


@dataclass(frozen=True, eq=False)
class RowSelection:
    """The rows a token-level reader uses: those of ``start..stop-1`` where ``mask`` is True
    (every one when ``mask`` is None: a plain slice). Read units stay on chunk boundaries;
    the rows left out of a unit are left out of its kept positions (:meth:`keep`)."""

    start: int
    stop: int
    mask: np.ndarray | None = None  # bool (stop - start,)

    @property
    def n(self) -> int:
        return self.stop - self.start if self.mask is None else int(self.mask.sum())

    @property
    def span(self) -> slice:
        return slice(self.start, self.stop)

    def index(self) -> np.ndarray:
        """int64 (n,): the selected rows, ascending."""
        rows = np.arange(self.start, self.stop, dtype=np.int64)
        return rows if self.mask is None else rows[self.mask]

    def of(self, unit: slice) -> np.ndarray | None:
        """bool (unit rows,): which rows of ``unit`` (inside the span) are selected; None: all."""
        return (
            None
            if self.mask is None
            else self.mask[unit.start - self.start : unit.stop - self.start]
        )

    def keep(self, store: StoreLike, unit: slice, skip_bos: bool, skip_padding: bool) -> np.ndarray:
        """bool (row, pos) of ``unit``: the kept positions of the selected rows."""
        keep = keep_positions(store, unit, skip_bos, skip_padding)
        sel = self.of(unit)
        if sel is not None:
            keep &= sel[:, None]
        return keep

    def key(self) -> list:
        """JSON-able identity: [start, stop], or [start, stop, n, digest of the mask]."""
        if self.mask is None:
            return [self.start, self.stop]
        return [
            self.start,
            self.stop,
            self.n,
            hashlib.sha256(np.packbits(self.mask).tobytes()).hexdigest()[:16],
        ]

    def __str__(self) -> str:
        if self.mask is None:
            return f"rows {self.start}..{self.stop - 1}"
        return f"{self.n} rows of {self.start}..{self.stop - 1}"


def _rows_hint(n: int) -> str:
    return (
        f"pass rows= as a slice (e.g. slice(0, {n}) or slice(0, {n}, 2)), a range, a row index, a list of "
        f"row indices in 0..{n - 1}, or a bool mask of {n} rows"
    )


def select_rows(store: StoreLike, rows: RowsArg) -> RowSelection:
    """``rows`` of the store as a :class:`RowSelection`: a slice (any step, clipped to the
    store as Python slices are), a range, an int or a sequence of row indices (negative:
    from the end; each in range, none twice), or a bool mask of ``n_rows``. No rows is an error."""
    n = store.n_rows
    if rows is None:
        rows = slice(None)
    if isinstance(rows, range):
        if len(rows) == 0:
            raise ConfigError(f"rows={rows!r} selects no row; {_rows_hint(n)}.")
        rows = list(rows)
    if isinstance(rows, slice):
        if not all(
            v is None or (isinstance(v, Integral) and not isinstance(v, bool))
            for v in (rows.start, rows.stop, rows.step)
        ):
            raise ConfigError(
                f"rows={rows!r}: a slice's start, stop and step must be integers or None; "
                f"{_rows_hint(n)}."
            )
        if rows.step == 0:
            raise ConfigError(f"rows={rows!r}: a slice step cannot be zero; {_rows_hint(n)}.")
        idx = np.arange(n, dtype=np.int64)[rows]
        if len(idx) == 0:
            raise ConfigError(
                f"rows={rows!r} selects no row of store '{store.path}' (rows 0..{n - 1}); "
                f"{_rows_hint(n)}."
            )
        return _from_index(np.sort(idx))
    if isinstance(rows, bool) or isinstance(rows, (str, bytes, float)):
        raise ConfigError(f"rows={rows!r} is not a row selection; {_rows_hint(n)}.")
    if isinstance(rows, Integral):
        rows = [int(rows)]
    try:
        arr = np.asarray(rows)
    except Exception:
        arr = np.asarray([], dtype=object)
    if arr.dtype == bool and arr.shape == (n,):
        if not arr.any():
            raise ConfigError(f"rows= is a mask with no row set; {_rows_hint(n)}.")
        return _from_index(np.flatnonzero(arr))
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or len(arr) == 0:
        what = "with no row" if arr.size == 0 else f"of shape {arr.shape} and dtype {arr.dtype}"
        raise ConfigError(
            f"rows= ({type(rows).__name__} {what}) is not a row selection; {_rows_hint(n)}."
        )
    bad = arr[(arr < -n) | (arr >= n)]
    if len(bad):
        raise RowIndexError(
            f"rows= names row {int(bad[0])}, out of range: store '{store.path}' has rows 0..{n - 1} "
            f"(or -{n}..-1, counted from the end); {_rows_hint(n)}."
        )
    idx = np.sort(arr.astype(np.int64) % n)
    twice = idx[1:][idx[1:] == idx[:-1]]
    if len(twice):
        raise ConfigError(
            f"rows= names row {int(twice[0])} more than once; an epoch reads each row once: "
            "pass each row once."
        )
    return _from_index(idx)


def _from_index(idx: np.ndarray) -> RowSelection:
    """Sorted unique rows -> a selection (mask None when they are contiguous)."""
    a, b = int(idx[0]), int(idx[-1]) + 1
    if len(idx) == b - a:
        return RowSelection(a, b)
    mask = np.zeros(b - a, bool)
    mask[idx - a] = True
    return RowSelection(a, b, mask)


def row_units(
    store: StoreLike, rows: slice = slice(None), rows_per_unit: int | None = None
) -> list[slice]:
    """``rows`` cut into read units on inner-chunk boundaries (default: one inner chunk)."""
    a, b, _ = rows.indices(store.n_rows)
    rpc = store.layout.rows_per_chunk
    step = max(rpc, (rows_per_unit or rpc) // rpc * rpc)
    out, start = [], a
    while start < b:
        stop = min((start // step + 1) * step, b)
        out.append(slice(start, stop))
        start = stop
    return out


def read_units(store: StoreLike, sel: RowSelection, world: int = 1) -> list[slice]:
    """The training loader's read units over ``sel``, dealt to ``world`` ranks: the inner
    chunks holding a selected row (cut to the span); single rows when there are fewer such
    chunks than ranks, so that every rank gets work. Fewer rows than ranks is an error."""
    units = [u for u in row_units(store, sel.span) if sel.mask is None or sel.of(u).any()]  # type: ignore[union-attr]
    if len(units) >= world:
        return units
    if sel.n < world:
        raise ConfigError(
            f"The loader's {sel} ({sel.n} rows) cannot be shared by world_size={world} ranks: each "
            f"rank reads whole rows and needs one; run at most {sel.n} processes, or select more rows."
        )
    return [slice(int(r), int(r) + 1) for r in sel.index()]


class ChunkReader:
    """Reads row units in a given order with a pool of threads, ``prefetch`` units
    ahead, and hands them back in that order: (unit, {hook: array (row, pos, ...)})."""

    def __init__(
        self,
        store: StoreLike,
        hooks: Sequence[str],
        num_workers: int = 4,
        prefetch: int | None = None,
        transform: Callable[[slice, dict[str, np.ndarray]], Any] | None = None,
    ):
        if num_workers < 1:
            raise ConfigError(f"num_workers must be at least 1; got {num_workers}.")
        self.store, self.hooks = store, list(hooks)
        self.arrays = [store.array(f"acts/{h}") for h in self.hooks]
        self.num_workers = num_workers
        self.prefetch = prefetch or 2 * num_workers
        self.transform = transform

    def _read(self, unit: slice) -> Any:
        got = {
            h: read_checked(arr, unit, self.store.layout, self.store.path)
            for h, arr in zip(self.hooks, self.arrays)
        }
        return got if self.transform is None else self.transform(unit, got)

    def __call__(self, units: Sequence[slice]) -> Generator[tuple[slice, Any], None, None]:
        if self.num_workers == 1:
            for u in units:
                yield u, self._read(u)
            return
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="actstore-read")
        pending: deque[tuple[slice, Future]] = deque()
        todo = iter(units)
        try:
            for u in todo:
                pending.append((u, pool.submit(self._read, u)))
                if len(pending) >= self.prefetch:
                    break
            while pending:
                u, fut = pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(self._read, nxt)))
                yield u, fut.result()
        finally:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)
