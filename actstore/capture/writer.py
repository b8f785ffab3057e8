"""A background writer: shards are handed over through a bounded queue (bounded
memory, backpressure on the forward) and written by one thread. A failure is kept
and re-raised in the caller's thread at its next call, as WriterError."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from ..errors import WriterError

__all__ = ["BackgroundWriter"]

T = TypeVar("T")
_STOP = object()


class BackgroundWriter(Generic[T]):
    def __init__(
        self, write: Callable[[T], None], describe: Callable[[T], str], max_pending: int = 2
    ):
        self._write = write
        self._describe = describe
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._error: WriterError | None = None
        self._thread = threading.Thread(target=self._run, name="actstore-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is None:  # after a failure, drain without writing
                try:
                    self._write(item)  # type: ignore[arg-type]  # not _STOP: a T
                except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                    what = self._describe(item)  # type: ignore[arg-type]  # not _STOP: a T
                    msg = (
                        f"Writing {what} failed ({type(e).__name__}: {e}). "
                        "That shard is not marked done; fix the cause (e.g. free disk space) and rerun with --resume."
                    )
                    self._error = WriterError(msg)
                    self._error.__cause__ = e

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, item: T) -> None:
        while True:
            self.check()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait for every submitted item; raise the first failure."""
        self._queue.put(_STOP)
        self._thread.join()
        self.check()

    def abort(self) -> None:
        """Stop after the item being written; drop the rest."""
        self._error = self._error or WriterError("aborted")
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._queue.put(_STOP)
        self._thread.join()
