"""Many processes, one store: which process owns which write units, barriers, and
errors that every process sees. Used by caching, patching sweeps and probes.

Launch with anything that sets the torch.distributed environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): ``accelerate launch``,
``torchrun``, or Slurm via torchrun. The process group is made by accelerate's
``PartialState``: with ``cpu=True`` (gloo) when the run is on CPU, as torchrun
with CPU processes needs, else on the process's GPU (``cuda:LOCAL_RANK``, nccl).

* Ownership: the units still to do, in order, are dealt round-robin: unit
  ``todo[i]`` belongs to rank ``i % world``. Every rank computes the same list
  from the same manifest after the store exists, so ownership is disjoint and
  needs no messages.
* Rank 0 does what happens once (lock, create, finalize); its outcome, success or
  an error, is broadcast, so every rank raises the same clear error rather than
  waiting forever at the next barrier.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

from .errors import ActStoreError, PeerFailedError

__all__ = ["Group", "group_for", "single", "is_main_process", "launched"]

T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str | None = None  # this process's device when the launcher decides it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def owned(self, todo: Sequence[int]) -> list[int]:
        """This rank's share of ``todo`` (round-robin)."""
        return [int(u) for i, u in enumerate(todo) if i % self.world == self.rank]

    def all_gather(self, obj: T, what: str) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank: how a job split with
        :meth:`owned` brings its parts together."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        try:
            torch.distributed.all_gather_object(out, obj)
        except RuntimeError as e:
            raise PeerFailedError(
                f"Another process of this run stopped before {what} ({e})."
            ) from None
        return out

    def each(self, fn: Callable[[], T], what: str) -> list[T]:
        """Run ``fn`` on every rank (each on its share); every rank gets every rank's
        (picklable) result, in rank order, or raises the first rank's error if one failed."""
        result: Any = None
        error: ActStoreError | None = None
        try:
            result = fn()
        except ActStoreError as e:
            if not self.distributed:
                raise
            error = e
        got = self.all_gather((error, result), what)
        for err, _ in got:
            if err is not None:
                raise err
        return [r for _, r in got]

    def all_sum(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """``t`` (contiguous, on this rank's device) summed over every rank, in place:
        the same values on every rank, so decisions taken from it agree."""
        if self.distributed:
            try:
                torch.distributed.all_reduce(t)
            except RuntimeError as e:
                raise PeerFailedError(
                    f"Another process of this run stopped before {what} ({e})."
                ) from None
        return t

    def barrier(self, what: str) -> None:
        if not self.distributed:
            return
        try:
            torch.distributed.barrier()
        except RuntimeError as e:
            raise PeerFailedError(
                f"Another process of this run stopped before {what} ({e}). The units this process wrote are done; "
                "rerun the same command with --resume (any number of processes) to finish the rest."
            ) from None

    def on_main(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` on rank 0 only; every rank gets its (picklable) result, or raises
        its error if it failed."""
        result: Any = None
        error: ActStoreError | None = None
        if self.main:
            try:
                result = fn()
            except ActStoreError as e:
                error = e
        if self.distributed:
            box: list[Any] = [error, result]
            try:
                torch.distributed.broadcast_object_list(box, src=0)
            except RuntimeError as e:
                raise PeerFailedError(
                    f"Process 0 stopped during {what} ({e}); see its error."
                ) from None
            error, result = box
        if error is not None:
            raise error
        return result

    @contextmanager
    def main_context(self, make: Callable[[], Any], what: str) -> Iterator[None]:
        """Enter the context manager ``make()`` on rank 0 only (e.g. the store lock);
        a failure to enter it is raised on every rank."""
        entered: list[Any] = []

        def enter() -> None:
            cm = make()
            cm.__enter__()
            entered.append(cm)

        self.on_main(enter, what)
        try:
            yield
        except BaseException as e:
            if entered:
                entered[0].__exit__(type(e), e, e.__traceback__)
            raise
        else:
            if entered:
                entered[0].__exit__(None, None, None)


def single() -> Group:
    return Group()


def is_main_process() -> bool:
    """Rank 0 of a launched run, or a single process (for what is printed once)."""
    return int(os.environ.get("RANK", "0")) == 0


def launched() -> bool:
    """Whether this process is one of several launched by torchrun / accelerate."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _close_group() -> None:
    """Close the process group before the interpreter exits: gloo's threads outliving
    it abort the process now and then ("terminate called without an active exception").
    On gloo, every rank first waits for the others (at most a minute): a rank that closes
    its connections while another still talks to it aborts the same way."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "gloo":
        try:
            dist.monitored_barrier(timeout=timedelta(seconds=60))
        except RuntimeError:  # a rank that is gone or failed: close all the same
            pass
    dist.destroy_process_group()


def group_for(device: str) -> Group:
    """The current run's process group: a single process unless launched by
    torchrun / accelerate (WORLD_SIZE > 1), in which case the process group is
    initialised here (gloo on CPU, nccl on GPU)."""
    if not launched():
        return single()
    from accelerate import PartialState

    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=on_cpu)
    atexit.unregister(_close_group)  # once, however many jobs this process runs
    atexit.register(_close_group)
    local = int(getattr(state, "local_process_index", os.environ.get("LOCAL_RANK", 0)))
    dev = None
    if not on_cpu and device in ("auto", "cuda"):
        dev = f"cuda:{local}"
    return Group(rank=state.process_index, world=state.num_processes, local_rank=local, device=dev)
