"""The store lock, for the writers of capture/ (one implementation: actstore/store/lock.py,
where the readers' messages ask it too)."""

from __future__ import annotations

from ..store.lock import LockHolder, check_unlocked, lock_holder, lock_note, lock_path, store_lock

__all__ = ["store_lock", "lock_path", "lock_note", "lock_holder", "check_unlocked", "LockHolder"]
