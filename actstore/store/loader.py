"""The training loader: token-level torch batches of one or more sites, shuffled,
split across ranks, resumable, optionally normalised.

    store = actstore.open("acts.zarr")
    for batch in store.loader("resid_post:5", batch_size=4096, seed=0):
        x = batch["blocks.5.hook_resid_post"]  # (batch, d_model), random tokens of the store

The order of an epoch is a pure function of (seed, epoch, rank, world size) (see
epoch.py): the read units (inner chunks; single rows when the rows hold fewer chunks than
there are ranks) are permuted and dealt to the ranks, each rank reads its units a window
(``buffer_tokens``, default 8 units) at a time with a pool of threads,
shuffles the window's tokens together and cuts batches from the windows back to back.
So batch k is found without reading batches 0..k-1 (``state_dict`` / ``load_state_dict``),
and the batches are the same whatever the number of read threads.

:class:`ActivationLoader` is a ``torch.utils.data.IterableDataset``; :func:`make_dataloader`
(``store.dataloader(...)``) wraps it in a ``DataLoader`` for trainers that want one.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import ConfigError
from .base import StoreLike
from .epoch import EpochPlan, resolve_rank
from .loader_args import flag, loader_hooks, parse_device, parse_dtype, whole
from .loader_state import STATE_VERSION, check_state, store_identity
from .norm import Normalizer, normalizers
from .tokens import (
    ChunkReader,
    RowsArg,
    RowSelection,
    TokenSite,
    keep_positions,
    read_units,
    row_units,
    select_rows,
    token_sites,
)
from .view import resolve_sites
from .window_batches import INDEX, WindowBatches

__all__ = [
    "resolve_sites",
    "TokenSite",
    "token_sites",
    "keep_positions",
    "row_units",
    "ChunkReader",
    "ActivationLoader",
    "ActivationDataLoader",
    "make_dataloader",
]


class ActivationLoader(IterableDataset):
    """Token-level torch batches of one or more sites: {hook: (batch, *feature),
    "row": (batch,), "pos": (batch,)}, every site's vectors of the same tokens, in the
    same order. Each epoch yields every kept token of ``rows`` once across the ranks.

    The loader is one stream with one position (``state_dict``): iterating continues
    where the last iteration stopped, a finished epoch moves on to the next, and a second
    iterator while one is open is refused. ``set_epoch(e)`` starts epoch ``e`` from its
    first batch (it keeps the position when ``e`` is the current epoch, so a resumed loop
    may call it).

    Options beyond the store's reading ones (``skip_bos``, ``skip_padding``, ``rows``: a
    slice with any step, a range, a row, a list of rows or a bool mask):
    ``rank``/``world_size`` (default: torch.distributed, then torchrun's RANK/WORLD_SIZE);
    ``even_batches`` (every rank yields the smallest rank's number of whole batches,
    dropping the rest of each rank's tokens: what DDP needs); ``center``/``scale``
    (subtract the exact mean; multiply by sqrt(d) / mean norm, see norm.py); ``dtype`` (a
    floating torch dtype or its name); ``device`` (batches are gathered in pinned memory
    and copied non-blocking when it is a GPU); ``num_workers`` read threads, ``prefetch``
    chunks read ahead. Every argument is checked before anything is read.
    """

    def __init__(
        self,
        store: StoreLike,
        sites: str | Sequence[str],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        *,
        epoch: int = 0,
        skip_bos: bool = True,
        skip_padding: bool = True,
        rows: RowsArg = slice(None),
        buffer_tokens: int | None = None,
        num_workers: int = 4,
        prefetch: int | None = None,
        drop_last: bool = False,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        even_batches: bool = False,
        center: bool = False,
        scale: bool = False,
        progress: bool = True,
    ):
        self.batch_size = whole("batch_size", batch_size, 1)
        self.seed = whole(
            "seed",
            seed,
            0,
            "The order of every epoch is a pure function of the seed: pass an integer, e.g. seed=0",
        )
        self.epoch = whole("epoch", epoch, 0)
        self.shuffle, self.skip_bos, self.skip_padding, self.drop_last, self.even_batches = (
            flag(n, v)
            for n, v in (
                ("shuffle", shuffle),
                ("skip_bos", skip_bos),
                ("skip_padding", skip_padding),
                ("drop_last", drop_last),
                ("even_batches", even_batches),
            )
        )
        center, scale, progress = (
            flag("center", center),
            flag("scale", scale),
            flag("progress", progress),
        )
        self.num_workers = whole("num_workers (read threads)", num_workers, 1)
        self.prefetch = None if prefetch is None else whole("prefetch", prefetch, 1)
        buffer = None if buffer_tokens is None else whole("buffer_tokens", buffer_tokens, 1)
        self.dtype, self.device = parse_dtype(dtype), parse_device(device)
        self.pin = self.device is not None and self.device.type == "cuda"
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.store = store
        self.hooks = loader_hooks(store, sites)
        self.sites = token_sites(store, self.hooks)
        self.rows: RowSelection = select_rows(store, rows)
        store.check_shards(
            np.unique(self.rows.index() // store.layout.rows_per_shard), f"The loader's {self.rows}"
        )
        self.units = read_units(store, self.rows, self.world_size)
        self.unit_tokens = self._count_tokens()
        if not self.unit_tokens.any():
            raise ConfigError(
                f"The loader's {self.rows} of '{store.path}' hold no token to train on (skip_bos="
                f"{self.skip_bos}, skip_padding={self.skip_padding}: every position is BOS or "
                "padding); select other rows, or pass skip_bos=False."
            )
        tokens_per_unit = max(u.stop - u.start for u in self.units) * store.layout.seq_len
        # default: 8 units' tokens and at least 4 batches, so that each batch mixes several chunks
        self._buffer_default = buffer is None
        self.buffer_tokens = buffer or max(8 * tokens_per_unit, 4 * self.batch_size)
        self.window_units = max(1, -(-self.buffer_tokens // tokens_per_unit))
        self._identity = store_identity(store)
        self._open: weakref.ref | None = None  # the open iterator, if any
        self._done = 0  # batches of self.epoch already yielded
        self.norm: dict[str, Normalizer] = (
            normalizers(
                store,
                self.hooks,
                self.rows,
                self.skip_bos,
                self.skip_padding,
                center,
                scale,
                self.num_workers,
                progress,
            )
            if center or scale
            else {}
        )
        self._norm_t: dict[str, tuple[torch.Tensor, float]] = {}

    # --- size and state ------------------------------------------------------------------
    def _count_tokens(self) -> np.ndarray:
        """int64 (unit,): kept tokens of each read unit (reads the mask of per-document stores)."""
        a = self.rows.start
        per_row = [
            self.rows.keep(self.store, u, self.skip_bos, self.skip_padding).sum(1)
            for u in row_units(self.store, self.rows.span, rows_per_unit=4096)
        ]
        counts = np.concatenate(per_row)
        return np.array([counts[u.start - a : u.stop - a].sum() for u in self.units], np.int64)

    def plan(self, epoch: int | None = None) -> EpochPlan:
        """This rank's order of ``epoch`` (default: the current one)."""
        return EpochPlan(
            self.unit_tokens,
            self.seed,
            self.epoch if epoch is None else epoch,
            self.rank,
            self.world_size,
            self.window_units,
            self.shuffle,
        )

    def _n_batches(self, plan: EpochPlan) -> int:
        return plan.n_batches(self.batch_size, self.drop_last, self.even_batches)

    @property
    def n_tokens(self) -> int:
        """Tokens one epoch yields on this rank (on every rank together when world_size is 1)."""
        if self.even_batches:
            return len(self) * self.batch_size
        return min(self.plan().rank_tokens(), len(self) * self.batch_size)

    @property
    def n_dropped(self) -> int:
        """Tokens of this rank's share of the current epoch that it does not yield
        (``drop_last``'s short batch, or ``even_batches``'s rest)."""
        return self.plan().rank_tokens() - self.n_tokens

    def __len__(self) -> int:
        """Batches one epoch yields on this rank: ranks may differ by one or more unless even_batches."""
        return self._n_batches(self.plan())

    def _is_open(self) -> bool:
        gen = self._open() if self._open is not None else None
        return gen is not None and gen.gi_frame is not None  # alive and not finished

    def _refuse_while_open(self, what: str) -> None:
        if self._is_open():
            raise ConfigError(
                f"{what} while an iterator of this loader is open: the loader is one stream with one "
                f"position (epoch {self.epoch}, batch {self._done}), which that iterator holds. Finish "
                "or close it first (it.close(), or del it), or make a second loader for a second stream."
            )

    def set_epoch(self, epoch: int) -> None:
        epoch = whole(
            "epoch",
            epoch,
            0,
            "loader.set_epoch(e) starts epoch e (0, 1, 2, ...) from its first batch",
        )
        if epoch != self.epoch:
            self._refuse_while_open(f"set_epoch({epoch}) was called")
            self.epoch, self._done = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands (the next batch is batch ``batches`` of ``epoch``) and what
        fixes its order: the store's identity and the settings (see loader_state.py)."""
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "batches": self._done,
            "store": self._identity,
            "sites": list(self.hooks),
            "rows": self.rows.key(),
            "skip_bos": self.skip_bos,
            "skip_padding": self.skip_padding,
            "world_size": self.world_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "even_batches": self.even_batches,
            "buffer_tokens": self.buffer_tokens,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from any rank of a run of the same store with the same
        settings and world size): the next batch is the one the saved run would have yielded.
        A state of another store or other settings, or out of range, is refused, naming both sides."""
        self._refuse_while_open("load_state_dict was called")
        epoch, batches = check_state(
            state,
            self.state_dict(),
            self.store.path,
            lambda e: self._n_batches(self.plan(e)),
            self._buffer_default,
        )
        self.epoch, self._done = epoch, batches

    # --- batches -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if get_worker_info() is not None:
            raise ConfigError(
                "ActivationLoader reads with its own threads (num_workers=...) and splits the store "
                "across ranks itself; use it in a DataLoader with num_workers=0, e.g. "
                "actstore.store.loader.make_dataloader(store, ...) or store.dataloader(...)."
            )
        self._refuse_while_open("A second iterator was asked for")
        batches = self._batches()
        self._open = weakref.ref(batches)
        return batches

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._done >= self._n_batches(self.plan()):  # the last one saved at the end of its epoch
            self.epoch, self._done = self.epoch + 1, 0
        plan = self.plan()
        limit = plan.checked_batches(self.batch_size, self.drop_last, self.even_batches, self.rows)
        host = WindowBatches(
            self.store,
            self.hooks,
            self.rows,
            self.units,
            self.skip_bos,
            self.skip_padding,
            self.shuffle,
            self.batch_size,
            self.pin,
            self.num_workers,
            self.prefetch,
        )(plan, self._done * self.batch_size)
        try:
            for batch in host:
                if self._done >= limit:
                    break
                self._done += 1  # handed over at the yield: a state saved now resumes after it
                yield self._to_device(batch)
        finally:
            host.close()
        if self._done >= limit:
            self.epoch, self._done = self.epoch + 1, 0

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
            elif self.dtype is not None and k not in INDEX:
                t = t.to(self.dtype)
            out[k] = t
        return out

    def _norm_on(self, hook: str, device: torch.device) -> tuple[torch.Tensor, float]:
        if hook not in self._norm_t or self._norm_t[hook][0].device != device:
            n = self.norm[hook]
            # (*feature)
            self._norm_t[hook] = (
                torch.from_numpy(n.mean).float().to(device),
                n.scale,
            )
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


def make_dataloader(
    store: StoreLike,
    sites: str | Sequence[str],
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    **kw: Any,
) -> ActivationDataLoader:
    """A ready ``DataLoader`` of the store's tokens (``store.dataloader(...)``); the options
    are :class:`ActivationLoader`'s (``num_workers`` is its read threads: the DataLoader
    itself runs in the main process)."""
    return ActivationDataLoader(ActivationLoader(store, sites, batch_size, shuffle, seed, **kw))
