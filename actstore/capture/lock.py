"""One writer per store: ``<store>.lock`` beside the store, created atomically
(O_EXCL) with the owner's pid, host and start time. A lock whose process is gone
(same host, pid not alive) is stale and taken over; any other is refused."""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from typing import Iterator

from ..errors import ConfigError, StoreLockedError

__all__ = ["store_lock", "lock_path", "lock_note"]


def lock_path(store: str) -> str:
    return os.path.abspath(store).rstrip(os.sep) + ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(path: str) -> dict | None:
    try:
        with open(path) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None  # vanished, or killed while writing it
    ok = isinstance(owner, dict) and isinstance(owner.get("pid"), int) and isinstance(owner.get("host"), str)
    return owner if ok else None  # else damaged: treated as one being written


def _unwritable(store: str, path: str, e: OSError) -> ConfigError:
    return ConfigError(f"Cannot write '{store}': the lock file {path} cannot be created ({e.strerror or e}); the folder "
                       "is not writable. Fix its permissions, or choose an output path in a folder you can write to.")


def _stale(path: str, other: dict | None, host: str) -> bool:
    """A lock left by a process that is gone: unreadable for over 10 s (killed while writing
    it), or owned by a dead pid of this host."""
    if other is None:
        return time.time() - os.path.getmtime(path) > 10
    return other.get("host") == host and not _alive(int(other.get("pid", -1)))


def _who(other: dict | None) -> str:
    return f"process {other['pid']} on {other['host']} since {other.get('started', '?')}" if other else "another run"


def lock_note(store: str) -> str | None:
    """One line on the store's lock for `actstore verify`, or None when there is none:
    stale (its process is gone: the next write takes it over), or held by a run."""
    path = lock_path(store)
    if not os.path.exists(path):
        return None
    other = _owner(path)
    try:
        stale = _stale(path, other, socket.gethostname())
    except OSError:  # removed meanwhile: the run finished
        return None
    if stale:
        return (f"a stale lock {path}: {_who(other)} is gone; the next `actstore cache --resume` or `actstore verify "
                "--repair` takes it over")
    return (f"a run holds the lock {path} ({_who(other)}): it may still be writing, so rows not done may be in "
            "progress; verify again when it has finished")


@contextmanager
def store_lock(store: str) -> Iterator[None]:
    path = lock_path(store)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
        raise _unwritable(store, path, e) from None
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _owner(path)
            if _stale(path, other, me["host"]):
                os.remove(path)
                continue
            raise StoreLockedError(
                f"Store '{store}' is being written by {_who(other)} (lock {path}). Wait for that run to finish; "
                "if it is gone (e.g. its machine died), delete the lock file and rerun with --resume."
            ) from None
        except OSError as e:
            raise _unwritable(store, path, e) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise StoreLockedError(f"Could not take the lock {path}; delete it if no run is writing '{store}'.")
    try:
        yield
    finally:
        if (_owner(path) or {}).get("pid") == me["pid"]:
            os.remove(path)
