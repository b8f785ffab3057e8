"""One writer per store: ``<store>.lock`` beside the store, created atomically (O_EXCL)
with the owner's pid, host and start time. A lock whose process is gone (same host, pid
not alive) is stale and taken over; any other is refused. Every command that changes a
store takes it first (cache, resume, overwrite, repair, a job writing results), and
every message that advises one of them asks :func:`lock_holder` first.

Object stores (URLs) have no lock file: nothing here applies to them."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, StoreLockedError
from ..location import is_url, normalize

__all__ = ["store_lock", "lock_path", "lock_holder", "lock_note", "LockHolder", "check_unlocked"]

_held: dict[
    str, tuple[int, int]
] = {}  # lock path -> (thread holding it, depth): the locks this process holds


def lock_path(store: str) -> str:
    return os.path.abspath(normalize(store)).rstrip(os.sep) + ".lock"  # (file:// stripped)


def _alive(pid: int) -> bool:
    if pid <= 0:  # no process (and os.kill would signal a process group)
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or no pid at all
        return False
    except PermissionError:
        return True
    return True


def _owner(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            owner = json.load(f)
    except (OSError, ValueError):
        return None  # vanished, or killed while writing it
    ok = (
        isinstance(owner, dict)
        and isinstance(owner.get("pid"), int)
        and isinstance(owner.get("host"), str)
    )
    return owner if ok else None  # else damaged: treated as one being written


def _stale(path: str, other: dict[str, Any] | None, host: str) -> bool:
    """A lock left by a process that is gone: unreadable for over 10 s (killed while writing
    it), or owned by a dead pid of this host."""
    if other is None:
        return time.time() - os.path.getmtime(path) > 10
    return other.get("host") == host and not _alive(int(other.get("pid", -1)))


@dataclass(frozen=True)
class LockHolder:
    """Who holds a store's lock: ``stale`` when its process is gone (the next write takes
    it over); ``local`` when it is a process of this host (known alive unless stale)."""

    path: str
    owner: dict[str, Any] | None  # None: a lock file still being written, or damaged
    stale: bool
    local: bool

    @property
    def writing(self) -> bool:
        """A live run holds it (an unreadable lock is damaged, or being taken this instant: not counted)."""
        return not self.stale and self.owner is not None

    @property
    def who(self) -> str:
        o = self.owner
        return (
            f"process {o['pid']} on {o['host']} since {o.get('started', '?')}"
            if o
            else "another run"
        )

    def if_gone(self, then: str) -> str:
        """The fallback, should the holder not be the run it seems: the lock file to delete, then ``then``."""
        if self.owner is None:
            why = "the lock file cannot be read yet: a run is taking it, unless it is damaged; if no run is writing it"
        elif self.local:
            why = f"if process {self.owner['pid']} is no actstore run (its pid was reused after a crash)"
        else:
            why = "if that run is gone (e.g. its machine died)"
        return f"{why}, delete the lock file {self.path}, then {then}"

    def refusal(self, store: str, then: str = "run this command again") -> StoreLockedError:
        return StoreLockedError(
            f"Store '{store}' is being written by {self.who} (lock {self.path}); nothing was "
            f"changed. Wait for that run to finish, then {then}; {self.if_gone(then)}."
        )


def lock_holder(store: str) -> LockHolder | None:
    """The holder of ``store``'s lock, or None when there is none (or ``store`` is a URL)."""
    if is_url(store):
        return None
    path = lock_path(store)
    if not os.path.exists(path):
        return None
    other, host = _owner(path), socket.gethostname()
    try:
        stale = _stale(path, other, host)
    except OSError:  # removed meanwhile: the run finished
        return None
    return LockHolder(path, other, stale, other is not None and other.get("host") == host)


def check_unlocked(store: str, then: str = "run this command again") -> None:
    """Refuse (StoreLockedError) when a live run of another process or thread holds ``store``'s
    lock: for a command that will change the store after its work, to refuse before it."""
    holder = lock_holder(store)
    mine = _held.get(lock_path(store), (None,))[0] == threading.get_ident()
    if holder is not None and not holder.stale and not mine:
        raise holder.refusal(store, then)


def lock_note(store: str) -> str | None:
    """One line on the store's lock for `actstore verify`, or None when there is none:
    stale (its process is gone: the next write takes it over), or held by a run."""
    h = lock_holder(store)
    if h is None:
        return None
    if h.stale:
        return (
            f"a stale lock {h.path}: {h.who} is gone; the next `actstore cache --resume` or `actstore verify "
            "--repair` takes it over"
        )
    return (
        f"a run holds the lock {h.path} ({h.who}): it is writing the store, so rows not done may be in "
        "progress; --repair is refused until it finishes"
    )


def _unwritable(store: str, path: str, e: OSError) -> ConfigError:
    return ConfigError(
        f"Cannot write '{store}': the lock file {path} cannot be created ({e.strerror or e}); the folder "
        "is not writable. Fix its permissions, or choose an output path in a folder you can write to."
    )


def _create(store: str, path: str, wait: float) -> None:
    """Create the lock file, taking over a stale one; wait up to ``wait`` seconds for a live holder."""
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    deadline, takeovers = time.monotonic() + wait, 0
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock_holder(store)
            if holder is not None and holder.stale and takeovers < 3:
                takeovers += 1
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                continue
            if holder is not None and time.monotonic() >= deadline:
                if holder.stale:
                    raise StoreLockedError(
                        f"Could not take the lock {path}; delete it if no run is writing '{store}'."
                    ) from None
                raise holder.refusal(store) from None
            time.sleep(0.05)
            continue
        except OSError as e:
            raise _unwritable(store, path, e) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return


@contextmanager
def store_lock(store: str, wait: float = 0.0) -> Iterator[None]:
    """Hold ``store``'s lock for the block; StoreLockedError (nothing changed) while a live run
    holds it, after waiting up to ``wait`` seconds for it. Reentrant in one thread (repair
    holds it while it resumes the store)."""
    path = lock_path(store)
    me = threading.get_ident()
    # (another thread waits for the file, as another process does)
    if path in _held and _held[path][0] == me:
        _held[path] = (me, _held[path][1] + 1)
        try:
            yield
        finally:
            _held[path] = (me, _held[path][1] - 1)
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
        raise _unwritable(store, path, e) from None
    _create(store, path, wait)
    _held[path] = (me, 1)
    try:
        yield
    finally:
        del _held[path]
        if (_owner(path) or {}).get("pid") == os.getpid():
            os.remove(path)
