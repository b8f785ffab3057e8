"""Host buffers that a shard's activations are staged in between the forward and the
writer, recycled through a small pool (bounded memory, backpressure).

On CUDA the buffers are pinned and each captured activation is copied into them on
a side stream with ``non_blocking=True`` as soon as its hook fires, so the
device-to-host copies overlap the rest of the forward; the forward never waits on
them. Sealing a filled set records an event; the writer thread waits on that event,
not the compute thread. On CPU the copy (with the cast to the storage dtype) is a
plain memcpy into the recycled buffer.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping

import numpy as np
import torch

from ..sites import SiteShape

__all__ = ["ShardBuffers", "BufferPool"]


class ShardBuffers:
    """One shard of every site: ``tensors[hook]`` is (rows, *site shape) on the host."""

    def __init__(self, shapes: Mapping[str, SiteShape], storage_dtype: str, rows: int, device: str):
        self.dtype = getattr(torch, storage_dtype)
        self.cuda = torch.device(device).type == "cuda"
        self.tensors = {
            h: torch.empty((rows, *s.shape), dtype=self.dtype, pin_memory=self.cuda)
            for h, s in shapes.items()
        }
        self.stream = torch.cuda.Stream(torch.device(device)) if self.cuda else None
        self.event: torch.cuda.Event | None = None
        self.overflow: dict[
            str, torch.Tensor
        ] = {}  # float16 storage: finite values that became inf, on the device

    def put(self, hook: str, start: int, value: torch.Tensor) -> None:
        """Stage ``value`` (batch, *site shape), on the model's device, at row ``start``."""
        dst = self.tensors[hook][start : start + len(value)]
        cast = value.to(self.dtype)
        # no sync: checked when the shard is written
        if self.dtype == torch.float16 and value.dtype != torch.float16:
            lost = (torch.isinf(cast) & torch.isfinite(value)).any()
            self.overflow[hook] = lost if hook not in self.overflow else self.overflow[hook] | lost
        if self.stream is None:
            dst.copy_(cast)
            return
        value = cast  # on the compute stream, where it was made
        self.stream.wait_stream(torch.cuda.current_stream(value.device))
        with torch.cuda.stream(self.stream):
            dst.copy_(value, non_blocking=True)
        value.record_stream(self.stream)  # keep its memory until the copy is done

    def seal(self) -> None:
        """Mark the set complete (after its last put)."""
        if self.stream is not None:
            self.event = torch.cuda.Event()
            self.event.record(self.stream)

    def arrays(self, rows: int) -> dict[str, np.ndarray]:
        """The first ``rows`` rows of every site as numpy views, once every copy has landed.
        Raises if a finite activation overflowed float16 storage."""
        if self.event is not None:
            self.event.synchronize()
        bad = sorted(h for h, flag in self.overflow.items() if bool(flag))
        if bad:
            raise OverflowError(
                f"{', '.join(bad)} hold values beyond float16's range (|x| > 65504), which would be "
                "stored as inf; cache with --storage-dtype float32"
            )
        return {h: t[:rows].numpy() for h, t in self.tensors.items()}


class BufferPool:
    """At most ``n_sets`` ShardBuffers, made on first need and reused after release."""

    def __init__(self, make: Callable[[], ShardBuffers], n_sets: int):
        self._make, self._made, self._n = make, 0, n_sets
        self._free: queue.Queue[ShardBuffers] = queue.Queue()

    def acquire(self, check: Callable[[], None]) -> ShardBuffers:
        """A free set; waits for the writer to release one, calling ``check`` (which
        raises the writer's error, if any) while it waits."""
        while True:
            check()
            try:
                return self._free.get_nowait()
            except queue.Empty:
                pass
            if self._made < self._n:
                self._made += 1
                return self._make()
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue

    def release(self, bufs: ShardBuffers) -> None:
        bufs.event = None
        bufs.overflow = {}
        self._free.put(bufs)
