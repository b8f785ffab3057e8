"""Fault injection for crash tests: ``ACTSTORE_FAULT=<point>:<shard>`` makes the
process SIGKILL itself when the writer reaches that point for that shard. Points,
in write order: before_write, mid_write (index arrays written, activations not),
before_done (every array and the stats written, `done` not), after_done.

``ACTSTORE_PAUSE=<point>:<seconds>`` makes the process sleep at a named point (``deal``:
where each process takes its share of the shards), so a test can make one rank late.

``ACTSTORE_SLOW_IO=<seconds>`` stands for a slow disk: every object written to a
local store waits that long between its bytes and its fsync, so a test's kill can
land in the middle of a run however fast the machine is.

Private on purpose: a hook for the crash tests, not part of the API. The writer
modules import the module itself (``from .. import _faults``), never its names."""

from __future__ import annotations

import os
import signal
import time

POINTS = ("before_write", "mid_write", "before_done", "after_done")
_SPEC = os.environ.get("ACTSTORE_FAULT", "")
_SLOW_IO = float(os.environ.get("ACTSTORE_SLOW_IO", "0") or 0)
_PAUSE = os.environ.get("ACTSTORE_PAUSE", "")


def point(name: str, shard: int) -> None:
    if _SPEC and _SPEC == f"{name}:{shard}":
        os.kill(os.getpid(), signal.SIGKILL)


def slow_io() -> None:
    if _SLOW_IO:
        time.sleep(_SLOW_IO)


def pause(name: str) -> None:
    at, _, seconds = _PAUSE.partition(":")
    if at == name:
        time.sleep(float(seconds))
