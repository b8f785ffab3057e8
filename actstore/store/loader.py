"""Token-level reading of a store: site specs resolved against the store's hooks,
threaded chunk reads, and a shuffled training loader.

    store = actstore.ActivationStore.open("acts.zarr")
    for batch in store.loader("resid_post:5", batch_size=4096, seed=0):
        x = batch["blocks.5.hook_resid_post"]  # (batch, d_model), random tokens of the store

The shuffle is chunk-aware: inner chunks (the store's unit of reading) are read in a
random order by a pool of threads, and their tokens pass through a mixing buffer that
is shuffled, half emitted as batches, and refilled. Everything random comes from one
``numpy.random.Generator`` seeded with (seed, epoch), consumed in a fixed order, so a
seed gives the same batches whatever the number of workers.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .format import read_checked
from .base import StoreLike
from .view import resolve_sites


__all__ = ["resolve_sites", "TokenSite", "token_sites", "keep_positions", "row_units", "ChunkReader",
           "ActivationLoader"]


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


class ActivationLoader:
    """Token-level torch batches of one or more sites: {hook: (batch, *feature),
    "row": (batch,), "pos": (batch,)}. Iterate it once per epoch; ``set_epoch``
    (or ``epoch=``) changes the order, deterministically."""

    def __init__(self, store: "StoreLike", sites: str | Sequence[str], batch_size: int, shuffle: bool = True,
                 seed: int = 0, *, epoch: int = 0, skip_bos: bool = True, skip_padding: bool = True,
                 rows: slice = slice(None), buffer_tokens: int | None = None, num_workers: int = 4,
                 prefetch: int | None = None, drop_last: bool = False, dtype: torch.dtype | None = None,
                 device: str | torch.device | None = None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}.")
        self.store = store
        self.hooks = resolve_sites(store, sites)
        self.sites = token_sites(store, self.hooks)
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, epoch
        self.skip_bos, self.skip_padding, self.drop_last = skip_bos, skip_padding, drop_last
        self.rows = slice(*rows.indices(store.n_rows)[:2])
        self.units = row_units(store, self.rows)
        tokens_per_unit = store.layout.rows_per_chunk * store.layout.seq_len
        # default: 8 chunks' tokens and at least 4 batches, so that each emitted half mixes >= 4 chunks
        self.buffer_tokens = buffer_tokens or max(8 * tokens_per_unit, 4 * batch_size)
        self.num_workers, self.prefetch = num_workers, prefetch
        self.dtype, self.device = dtype, device
        store.check_done(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def n_tokens(self) -> int:
        """Tokens one epoch yields."""
        n = 0
        for unit in row_units(self.store, self.rows, rows_per_unit=4096):
            n += int(keep_positions(self.store, unit, self.skip_bos, self.skip_padding).sum())
        return n

    def __len__(self) -> int:
        n = self.n_tokens
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _tokens_of(self, unit: slice, acts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One unit's (row, pos, ...) arrays -> its kept tokens (token, ...), row-major. Runs in a worker."""
        keep = keep_positions(self.store, unit, self.skip_bos, self.skip_padding)
        r, p = np.nonzero(keep)
        out = {h: a.reshape(-1, *a.shape[2:]) if len(r) == keep.size else a[keep] for h, a in acts.items()}
        out["row"], out["pos"] = (r + unit.start).astype(np.int64), p.astype(np.int64)
        return out

    def _batch(self, parts: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in parts.items():
            t = torch.from_numpy(np.ascontiguousarray(v))
            if self.dtype is not None and k not in ("row", "pos"):
                t = t.to(self.dtype)
            out[k] = t.to(self.device) if self.device is not None else t
        return out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = [self.units[i] for i in rng.permutation(len(self.units))] if self.shuffle else self.units
        reader = ChunkReader(self.store, self.hooks, self.num_workers, self.prefetch, transform=self._tokens_of)
        parts = (got for _, got in reader(order))
        yield from (self._shuffled(parts, rng) if self.shuffle else self._in_order(parts))

    def _shuffled(self, parts: Iterator[dict[str, np.ndarray]], rng: np.random.Generator
                  ) -> Iterator[dict[str, torch.Tensor]]:
        """The mixing buffer: tokens go into free slots of a fixed array; when it holds
        buffer_tokens, a random half (whole batches) is emitted and those slots are freed.
        Each token is copied in once and gathered out once."""
        bs, cap = self.batch_size, self.buffer_tokens + self.store.layout.rows_per_chunk * self.store.layout.seq_len
        buf: dict[str, np.ndarray] = {}
        held = np.zeros(0, np.int64)  # occupied slots
        free = np.arange(cap)
        for got in parts:
            k = len(got["row"])
            if not buf:
                buf = {key: np.empty((cap, *v.shape[1:]), v.dtype) for key, v in got.items()}
            slots, free = free[:k], free[k:]
            for key, v in got.items():
                buf[key][slots] = v
            held = np.concatenate([held, slots])
            if len(held) < self.buffer_tokens:
                continue
            perm = rng.permutation(len(held))
            n_out = max(len(held) - self.buffer_tokens // 2, bs) // bs * bs
            out, held = held[perm[:n_out]], held[perm[n_out:]]
            for i in range(0, n_out, bs):
                yield self._batch({key: b[out[i:i + bs]] for key, b in buf.items()})
            free = np.concatenate([free, out])
        out = held[rng.permutation(len(held))]
        stop = len(out) // bs * bs if self.drop_last else len(out)
        for i in range(0, stop, bs):
            yield self._batch({key: b[out[i:i + bs]] for key, b in buf.items()})

    def _in_order(self, parts: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, torch.Tensor]]:
        bs = self.batch_size
        rest: dict[str, np.ndarray] | None = None
        for got in parts:
            merged = got if rest is None else {k: np.concatenate([rest[k], v]) for k, v in got.items()}
            n_out = len(merged["row"]) // bs * bs
            for i in range(0, n_out, bs):
                yield self._batch({k: v[i:i + bs] for k, v in merged.items()})
            rest = {k: v[n_out:] for k, v in merged.items()}
        n = 0 if rest is None else len(rest["row"])
        if n and not (self.drop_last and n < bs):
            yield self._batch(rest)
