"""The order of one epoch of the training loader, as a pure function of (seed, epoch,
rank, world size): which read units (inner chunks, or single rows when there are fewer
chunks than ranks: tokens.read_units) each rank reads, grouped into
windows whose tokens are shuffled together, and where batch k starts. Nothing here
reads activations, so a resumed loader finds batch k without replaying the data.

    units (store order) --permute(seed, epoch)--> u0 u1 u2 ... --deal--> rank r: u_r, u_{r+W}, ...
    rank r's units, a few at a time: window 0 | window 1 | ...  (tokens of a window shuffled together)
    batches: the windows' shuffled tokens, back to back, cut every batch_size tokens
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..parallel import launched

__all__ = ["resolve_rank", "EpochPlan", "Window"]


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): the explicit arguments, else torch.distributed's process group
    when initialised, else the RANK / WORLD_SIZE environment torchrun and accelerate set,
    else (0, 1)."""
    if (rank is None) != (world_size is None):
        raise ConfigError(
            f"Pass rank= and world_size= together (got rank={rank!r}, world_size={world_size!r})."
        )
    if rank is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        elif launched():
            env = os.environ.get("RANK", "0"), os.environ["WORLD_SIZE"]
            if not all(v.strip().isdigit() for v in env):
                raise ConfigError(
                    f"The environment has RANK={env[0]!r} and WORLD_SIZE={env[1]!r}, not integers; launch "
                    "with torchrun or accelerate (which set them), or pass rank= and world_size=."
                )
            rank, world_size = int(env[0]), int(env[1])
        else:
            rank, world_size = 0, 1
    if not (
        isinstance(world_size, int)
        and not isinstance(world_size, bool)
        and world_size >= 1
        and isinstance(rank, int)
        and not isinstance(rank, bool)
        and 0 <= rank < world_size
    ):
        raise ConfigError(
            f"rank must be in 0..world_size-1 with world_size >= 1; got rank={rank!r}, "
            f"world_size={world_size!r}. Pass integers: world_size, the number of processes, and rank, "
            "this process's place among them."
        )
    return rank, world_size


@dataclass(frozen=True)
class Window:
    """Read units whose tokens are shuffled together; ``skip`` leading tokens of the
    shuffled order are dropped (already yielded before a resume)."""

    units: tuple[int, ...]  # indices into the loader's unit list
    key: tuple[int, ...]  # seeds the window's token permutation
    n_tokens: int
    skip: int = 0


@dataclass(frozen=True)
class EpochPlan:
    """One rank's epoch. ``unit_tokens[i]``: tokens the loader yields from unit i."""

    unit_tokens: np.ndarray  # int64 (unit,)
    seed: int
    epoch: int
    rank: int
    world: int
    window_units: int
    shuffle: bool = True

    def order(self) -> np.ndarray:
        """Every unit, in this epoch's order (the same on every rank)."""
        n = len(self.unit_tokens)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def rank_units(self, rank: int | None = None) -> np.ndarray:
        """The units ``rank`` (default: this one) reads, in order: every world-th unit of
        :meth:`order`, so the ranks' shares are disjoint and cover the store."""
        return self.order()[self.rank if rank is None else rank :: self.world]

    def rank_tokens(self, rank: int | None = None) -> int:
        return int(self.unit_tokens[self.rank_units(rank)].sum())

    def windows(self, skip_tokens: int = 0) -> list[Window]:
        """This rank's windows, without those wholly inside the first ``skip_tokens``."""
        mine = self.rank_units()
        out, start = [], 0
        for w, i in enumerate(range(0, len(mine), self.window_units)):
            units = tuple(int(u) for u in mine[i : i + self.window_units])
            n = int(self.unit_tokens[list(units)].sum())
            if start + n > skip_tokens:
                key = (self.seed, self.epoch, self.world, self.rank, w)
                out.append(Window(units, key, n, max(0, skip_tokens - start)))
            start += n
        return out

    def n_batches(self, batch_size: int, drop_last: bool, even_batches: bool) -> int:
        """Batches this rank yields. With ``even_batches`` every rank yields as many as the
        rank with the fewest whole batches (the rest of each rank's tokens are dropped)."""
        if even_batches:
            return min(self.rank_tokens(r) // batch_size for r in range(self.world))
        n = self.rank_tokens()
        return n // batch_size if drop_last else -(-n // batch_size)

    def checked_batches(
        self, batch_size: int, drop_last: bool, even_batches: bool, rows: object
    ) -> int:
        """:meth:`n_batches`; none is an error naming the numbers and the fix (a training loop
        would otherwise turn over empty epochs for ever). ``rows``: the loader's rows, as the
        message names them."""
        n = self.n_batches(batch_size, drop_last, even_batches)
        if n:
            return n
        where = f"rank {self.rank} of world_size={self.world}" if self.world > 1 else "this loader"
        if even_batches and self.world > 1:
            fewest = min(self.rank_tokens(r) for r in range(self.world))
            raise ConfigError(
                f"Epoch {self.epoch} of the loader has no batch: with even_batches=True every rank yields "
                f"as many whole batches as the rank with the fewest tokens, and that rank gets {fewest} "
                f"tokens of {rows} ({int(self.unit_tokens.sum())} in all), fewer than one batch of "
                f"{batch_size}. Pass batch_size={max(fewest, 1)} or less, run fewer processes, or "
                "select more rows."
            )
        tokens = self.rank_tokens()
        why = "drop_last=True drops them" if tokens else "it has no token"
        raise ConfigError(
            f"Epoch {self.epoch} of the loader has no batch on {where}: it gets {tokens} tokens of "
            f"{rows} ({int(self.unit_tokens.sum())} in all), fewer than one batch of "
            f"{batch_size}, and {why}. Pass batch_size={max(tokens, 1)} or less, drop_last=False, "
            "run fewer processes, or select more rows."
        )
