"""Token-level reading of a store, shared by the training loader, its normalisation
pass and the probes: which sites hold one vector per token, which positions to use,
read units on inner-chunk boundaries, and a threaded reader of units in a given order."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import ConfigError
from .base import StoreLike
from .format import read_checked

__all__ = ["TokenSite", "token_sites", "keep_positions", "row_units", "ChunkReader"]


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


def token_sites(store: "StoreLike", hooks: Sequence[str]) -> list[TokenSite]:
    """The token-level description of ``hooks``; attention patterns (two position
    axes) are refused."""
    out = []
    for hook in hooks:
        s = store.meta.site(hook)
        dims, shape = list(s.dims), list(s.shape)
        if len(dims) < 3 or dims[1] != "pos" or "pos" in dims[2:] or any(d.endswith("_pos") for d in dims):
            raise ConfigError(f"Site {hook} is stored as ({', '.join(dims)}), not one vector per token; "
                              "probes and loaders need (row, pos, ...) sites such as resid_post or z.")
        out.append(TokenSite(hook, s.layer, tuple(dims[2:]), tuple(shape[2:])))
    return out


def keep_positions(store: "StoreLike", rows: slice, skip_bos: bool = True, skip_padding: bool = True
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


def row_units(store: "StoreLike", rows: slice = slice(None), rows_per_unit: int | None = None) -> list[slice]:
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


class ChunkReader:
    """Reads row units in a given order with a pool of threads, ``prefetch`` units
    ahead, and hands them back in that order: (unit, {hook: array (row, pos, ...)})."""

    def __init__(self, store: "StoreLike", hooks: Sequence[str], num_workers: int = 4, prefetch: int | None = None,
                 transform: Callable[[slice, dict[str, np.ndarray]], Any] | None = None):
        if num_workers < 1:
            raise ConfigError(f"num_workers must be at least 1; got {num_workers}.")
        self.store, self.hooks = store, list(hooks)
        self.arrays = [store.array(f"acts/{h}") for h in self.hooks]
        self.num_workers = num_workers
        self.prefetch = prefetch or 2 * num_workers
        self.transform = transform

    def _read(self, unit: slice) -> Any:
        got = {h: read_checked(arr, unit, self.store.layout, self.store.path) for h, arr in zip(self.hooks, self.arrays)}
        return got if self.transform is None else self.transform(unit, got)

    def __call__(self, units: Sequence[slice]) -> Iterator[tuple[slice, Any]]:
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
