"""The training loader: token-level torch batches of one or more sites, shuffled,
split across ranks, resumable, optionally normalised.

    store = actstore.open("acts.zarr")
    for batch in store.loader("resid_post:5", batch_size=4096, seed=0):
        x = batch["blocks.5.hook_resid_post"]  # (batch, d_model), random tokens of the store

The order of an epoch is a pure function of (seed, epoch, rank, world size) (see
epoch.py): the inner chunks are permuted and dealt to the ranks, each rank reads its
chunks a window (``buffer_tokens``, default 8 chunks) at a time with a pool of threads,
shuffles the window's tokens together and cuts batches from the windows back to back.
So batch k is found without reading batches 0..k-1 (``state_dict`` / ``load_state_dict``),
and the batches are the same whatever the number of read threads.

:class:`ActivationLoader` is a ``torch.utils.data.IterableDataset``; :func:`make_dataloader`
(``store.dataloader(...)``) wraps it in a ``DataLoader`` for trainers that want one.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import ConfigError
from .base import StoreLike
from .epoch import EpochPlan, Window, resolve_rank
from .norm import Normalizer, normalizers
from .tokens import ChunkReader, TokenSite, keep_positions, row_units, token_sites
from .view import resolve_sites

__all__ = ["resolve_sites", "TokenSite", "token_sites", "keep_positions", "row_units", "ChunkReader",
           "ActivationLoader", "ActivationDataLoader", "make_dataloader"]

_INDEX = ("row", "pos")


class ActivationLoader(IterableDataset):
    """Token-level torch batches of one or more sites: {hook: (batch, *feature),
    "row": (batch,), "pos": (batch,)}, every site's vectors of the same tokens, in the
    same order. Each epoch yields every kept token of ``rows`` once across the ranks.

    Iterating continues where the last iteration stopped; a finished epoch moves on to
    the next. ``set_epoch(e)`` starts epoch ``e`` from its first batch (it keeps the
    position when ``e`` is the current epoch, so a resumed loop may call it).

    Options beyond the store's reading ones (``skip_bos``, ``skip_padding``, ``rows``):
    ``rank``/``world_size`` (default: torch.distributed, then torchrun's RANK/WORLD_SIZE);
    ``even_batches`` (every rank yields the smallest rank's number of whole batches,
    dropping the rest of each rank's tokens: what DDP needs); ``center``/``scale``
    (subtract the exact mean; multiply by sqrt(d) / mean norm, see norm.py);
    ``device`` (batches are gathered in pinned memory and copied non-blocking when it is
    a GPU); ``num_workers`` read threads, ``prefetch`` chunks read ahead.
    """

    def __init__(self, store: StoreLike, sites: str | Sequence[str], batch_size: int, shuffle: bool = True,
                 seed: int = 0, *, epoch: int = 0, skip_bos: bool = True, skip_padding: bool = True,
                 rows: slice = slice(None), buffer_tokens: int | None = None, num_workers: int = 4,
                 prefetch: int | None = None, drop_last: bool = False, dtype: torch.dtype | None = None,
                 device: str | torch.device | None = None, rank: int | None = None, world_size: int | None = None,
                 even_batches: bool = False, center: bool = False, scale: bool = False, progress: bool = True):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer; got {batch_size!r}.")
        if num_workers < 1:
            raise ConfigError(f"num_workers (read threads) must be at least 1; got {num_workers}.")
        self.store = store
        self.hooks = resolve_sites(store, sites)
        self.sites = token_sites(store, self.hooks)
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, epoch
        self.skip_bos, self.skip_padding, self.drop_last = skip_bos, skip_padding, drop_last
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.even_batches = even_batches
        self.rows = slice(*rows.indices(store.n_rows)[:2])
        store.check_done(self.rows)
        self.units = row_units(store, self.rows)
        self.unit_tokens = self._count_tokens()
        tokens_per_unit = store.layout.rows_per_chunk * store.layout.seq_len
        # default: 8 chunks' tokens and at least 4 batches, so that each batch mixes several chunks
        self.buffer_tokens = buffer_tokens or max(8 * tokens_per_unit, 4 * batch_size)
        self.window_units = max(1, -(-self.buffer_tokens // tokens_per_unit))
        self.num_workers, self.prefetch = num_workers, prefetch
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.pin = self.device is not None and self.device.type == "cuda"
        self.norm: dict[str, Normalizer] = (normalizers(store, self.hooks, self.rows, skip_bos, skip_padding, center,
                                                        scale, num_workers, progress) if center or scale else {})
        self._norm_t: dict[str, tuple[torch.Tensor, float]] = {}
        self._done = 0  # batches of self.epoch already yielded

    # --- size and state ------------------------------------------------------------------
    def _count_tokens(self) -> np.ndarray:
        """int64 (unit,): kept tokens of each read unit (reads the mask of per-document stores)."""
        a = self.rows.start
        per_row = [keep_positions(self.store, u, self.skip_bos, self.skip_padding).sum(1)
                   for u in row_units(self.store, self.rows, rows_per_unit=4096)]
        counts = np.concatenate(per_row) if per_row else np.zeros(0, np.int64)
        return np.array([counts[u.start - a:u.stop - a].sum() for u in self.units], np.int64)

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """This rank's order of ``epoch`` (default: the current one)."""
        return EpochPlan(self.unit_tokens, self.seed, self.epoch if epoch is None else epoch, self.rank,
                         self.world_size, self.window_units, self.shuffle)

    @property
    def n_tokens(self) -> int:
        """Tokens one epoch yields on this rank (on every rank together when world_size is 1)."""
        if self.even_batches:
            return len(self) * self.batch_size
        return self.plan().rank_tokens()

    def __len__(self) -> int:
        """Batches one epoch yields on this rank: ranks may differ by one or more unless even_batches."""
        return self.plan().n_batches(self.batch_size, self.drop_last, self.even_batches)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self._done = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands: the next batch is batch ``batches`` of ``epoch``."""
        return {"epoch": self.epoch, "batches": self._done, "seed": self.seed, "world_size": self.world_size,
                "batch_size": self.batch_size, "shuffle": self.shuffle, "n_tokens": int(self.unit_tokens.sum()),
                "buffer_tokens": self.buffer_tokens}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from any rank of a run with the same world size, seed,
        batch size and tokens): the next batch is the one the saved run would have yielded."""
        mine = self.state_dict()
        for key in ("seed", "world_size", "batch_size", "shuffle", "n_tokens", "buffer_tokens"):
            if state.get(key) != mine[key]:
                raise ConfigError(f"The loader state was saved with {key}={state.get(key)!r}, this loader has "
                                  f"{key}={mine[key]!r}; resume with the same settings (and number of processes) "
                                  "as the saved run.")
        self.epoch, self._done = int(state["epoch"]), int(state["batches"])

    # --- batches -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if get_worker_info() is not None:
            raise ConfigError("ActivationLoader reads with its own threads (num_workers=...) and splits the store "
                              "across ranks itself; use it in a DataLoader with num_workers=0, e.g. "
                              "actstore.store.loader.make_dataloader(store, ...) or store.dataloader(...).")
        if self._done >= len(self) > 0:
            self.set_epoch(self.epoch + 1)
        limit = len(self)
        host = self._host_batches(self.plan(), self._done * self.batch_size)
        try:
            for batch in host:
                if self._done >= limit:
                    break
                self._done += 1  # handed over at the yield: a state saved now resumes after it
                yield self._to_device(batch)
        finally:
            host.close()
        if self._done >= limit > 0:
            self.set_epoch(self.epoch + 1)

    def _host_batches(self, plan: EpochPlan, skip_tokens: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches on the host (pinned when the device is a GPU): the windows' shuffled
        tokens back to back, after the first ``skip_tokens``; the last one may be short."""
        windows = plan.windows(skip_tokens)
        reader = ChunkReader(self.store, self.hooks, self.num_workers, self.prefetch, transform=self._tokens_of)
        parts = reader([self.units[u] for w in windows for u in w.units])
        bs, rest = self.batch_size, None
        try:
            for w in windows:
                got = self._window([next(parts)[1] for _ in w.units], w)
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
                    yield {k: v[i:i + bs] for k, v in got.items()}
                if n % bs:
                    rest = {k: v[n - n % bs:] for k, v in got.items()}
            if rest is not None:
                yield {k: v.pin_memory() for k, v in rest.items()} if self.pin else rest
        finally:
            parts.close()

    def _tokens_of(self, unit: slice, acts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One unit's (row, pos, ...) arrays as (row*pos, ...) views, with the flat indices
        of its kept positions ("keep") and their row and pos. Runs in a read thread."""
        keep = keep_positions(self.store, unit, self.skip_bos, self.skip_padding)
        r, p = np.nonzero(keep)
        out = {h: a.reshape(-1, *a.shape[2:]) for h, a in acts.items()}
        out["keep"] = np.flatnonzero(keep)
        out["row"], out["pos"] = (r + unit.start).astype(np.int64), p.astype(np.int64)
        return out

    def _window(self, parts: list[dict[str, np.ndarray]], w: Window) -> dict[str, torch.Tensor]:
        """The window's kept tokens in its shuffled order, without the first ``w.skip``:
        one gather per array, into pinned memory when the device is a GPU."""
        order = np.random.default_rng(list(w.key)).permutation(w.n_tokens) if self.shuffle else np.arange(w.n_tokens)
        order = torch.from_numpy(order[w.skip:])
        offsets = np.cumsum([0] + [len(p[self.hooks[0]]) for p in parts[:-1]])
        keep = torch.from_numpy(np.concatenate([p["keep"] + o for p, o in zip(parts, offsets)]))[order]
        out = {}
        for k in [*self.hooks, *_INDEX]:
            src = torch.from_numpy(np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k])
            idx = order if k in _INDEX else keep
            dst = torch.empty((len(idx), *src.shape[1:]), dtype=src.dtype, pin_memory=self.pin)
            out[k] = torch.index_select(src, 0, idx, out=dst)
        return out

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copy to the device (non-blocking from pinned memory: later work on the same
        stream waits for the copy, and the pinned block is not reused before it ends),
        then cast and normalise there."""
        out = {}
        for k, t in batch.items():
            if self.device is not None:
                t = t.to(self.device, non_blocking=self.pin)
            if k in self.norm:
                mean, scale = self._norm_on(k, t.device)
                t = ((t.float() - mean) * scale).to(self.dtype or t.dtype)
            elif self.dtype is not None and k not in _INDEX:
                t = t.to(self.dtype)
            out[k] = t
        return out

    def _norm_on(self, hook: str, device: torch.device) -> tuple[torch.Tensor, float]:
        if hook not in self._norm_t or self._norm_t[hook][0].device != device:
            n = self.norm[hook]
            self._norm_t[hook] = (torch.from_numpy(n.mean).float().to(device), n.scale)  # (*feature)
        return self._norm_t[hook]


class ActivationDataLoader(DataLoader):
    """A ``DataLoader`` over an :class:`ActivationLoader` (whose items are whole batches),
    with its ``set_epoch``, ``state_dict`` and ``load_state_dict``. Do not pass it through
    ``accelerator.prepare``: it already splits the store across ranks."""

    def __init__(self, dataset: ActivationLoader):
        super().__init__(dataset, batch_size=None, num_workers=0)

    @property
    def loader(self) -> ActivationLoader:
        return self.dataset  # type: ignore[return-value]

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)


def make_dataloader(store: StoreLike, sites: str | Sequence[str], batch_size: int, shuffle: bool = True,
                    seed: int = 0, **kw: Any) -> ActivationDataLoader:
    """A ready ``DataLoader`` of the store's tokens (``store.dataloader(...)``); the options
    are :class:`ActivationLoader`'s (``num_workers`` is its read threads: the DataLoader
    itself runs in the main process)."""
    return ActivationDataLoader(ActivationLoader(store, sites, batch_size, shuffle, seed, **kw))
