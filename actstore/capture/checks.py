"""Checks before any work: the output path (not inside another store, writable, empty
or a store to resume or replace), the same run on resume (corpus content included),
and free disk space. Each failure names the fix; nothing is written before them."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys

from .. import location
from ..corpus.fingerprint import content_changes, without_fingerprints
from ..errors import ConfigError, InsufficientDiskError, StoreExistsError, StoreMismatchError
from ..store import ActivationStore, StoreMeta
from ..store.format import is_store
from ..store.meta import CorpusMeta

__all__ = ["check_output", "existing_store", "check_same_run", "check_disk", "fmt_bytes", "Log"]


class Log:
    """Progress messages on stderr, one line each, when ``on``."""

    def __init__(self, on: bool):
        self.on = on

    def __call__(self, msg: str) -> None:
        if self.on:
            print(f"actstore: {msg}", file=sys.stderr, flush=True)


def _enclosing_store(path: str) -> str | None:
    """The actstore store that holds local ``path`` (one of its parent folders), if any."""
    parent = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.isfile(os.path.join(parent, "zarr.json")) and is_store(parent):
            return parent
        up = os.path.dirname(parent)
        if up == parent:
            return None
        parent = up


def check_output(out: str) -> None:
    """Refuse an output path inside another store, or one that cannot be written;
    called before the lock file (beside the store) is created."""
    if location.is_url(out):
        return
    outer = _enclosing_store(out)
    if outer is not None:
        raise StoreExistsError(
            f"'{out}' is inside the store '{outer}'; a store cannot hold another one (its "
            "verify, repair and overwrite would treat it as damage). Choose an output path outside it."
        )
    try:  # where the lock file goes, beside the store
        target = location.existing_folder(os.path.dirname(os.path.abspath(out)))
    except NotADirectoryError as e:
        raise ConfigError(
            f"Cannot write '{out}': '{e.filename}' is a file, not a folder. Choose another output path."
        ) from None
    try:  # a real write (permissions, read-only mounts), never inside a store
        location.write_probe(target)
    except OSError as e:
        raise ConfigError(
            f"Cannot write '{out}': the folder '{target}' is not writable ({e.strerror or e}). "
            "Fix its permissions, or choose an output path in a folder you can write to."
        ) from None
    if os.path.isdir(out) and not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(
            f"Cannot write '{out}': the folder is not writable. Fix its permissions "
            f"(chmod -R u+w '{out}'), or choose another output path."
        )


def existing_store(out: str, resume: bool, overwrite: bool) -> ActivationStore | None:
    """The store already at ``out`` (None: nothing there, or an empty folder); refused
    unless resume or overwrite was asked, and if it is not an actstore store."""
    if location.is_empty(out):
        return None
    if not is_store(out):
        raise StoreExistsError(
            f"'{out}' exists and is not an actstore store; refusing to touch it. Choose another output path."
        )
    store = ActivationStore.open(out)
    if not (resume or overwrite):
        raise StoreExistsError(
            f"Store '{out}' already exists ({store.rows_done} of {store.n_rows} rows done); "
            "pass --resume to continue that run or --overwrite to replace it."
        )
    return store


def _plain(meta: StoreMeta) -> StoreMeta:
    return dataclasses.replace(
        meta, corpus=CorpusMeta.from_dict(without_fingerprints(meta.corpus.to_dict()))
    )


def check_same_run(existing: ActivationStore, meta: StoreMeta, log: Log) -> None:
    """Refuse to resume ``existing`` with a run of other options, model or corpus
    content (``meta``: this run's plan); say what could not be checked."""
    changed, unchecked = content_changes(existing.meta.corpus.to_dict(), meta.corpus.to_dict())
    diffs = _plain(existing.meta).run_diffs(_plain(meta)) + changed
    if diffs:
        raise StoreMismatchError(
            f"Store '{existing.path}' was made by another model, corpus or config, so it cannot be resumed:\n  "
            + "\n  ".join(diffs)
            + "\nPass the same options as the first run, --overwrite to replace it, or another output path."
            + "".join(f"\nNot checked: {u}." for u in unchecked)
        )
    for u in unchecked:
        log(f"warning: resuming without checking {u}")


def check_disk(out: str, need: int) -> None:
    """Refuse a local store whose estimated size exceeds the free space."""
    parent = os.path.abspath(out)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    free = shutil.disk_usage(parent).free
    if need > free:
        raise InsufficientDiskError(
            f"The store needs about {fmt_bytes(need)} (uncompressed estimate) but {parent} has {fmt_bytes(free)} free; "
            "free some space, write elsewhere, cache fewer rows or sites, or pass --no-disk-check if compression will make it fit."
        )


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"
