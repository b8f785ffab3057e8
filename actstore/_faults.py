"""Fault injection for crash tests: ``ACTSTORE_FAULT=<point>:<shard>`` makes the
process SIGKILL itself when the writer reaches that point for that shard. Points,
in write order: before_write, mid_write (index arrays written, activations not),
before_done (every array and the stats written, `done` not), after_done."""

from __future__ import annotations

import os
import signal

POINTS = ("before_write", "mid_write", "before_done", "after_done")
_SPEC = os.environ.get("ACTSTORE_FAULT", "")


def point(name: str, shard: int) -> None:
    if _SPEC and _SPEC == f"{name}:{shard}":
        os.kill(os.getpid(), signal.SIGKILL)
