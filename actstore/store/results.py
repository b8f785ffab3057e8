"""Job results: named arrays, with dimension names and JSON attributes, under
``results/<name>`` of a store (or under ``<name>`` of a plain results group, for
patching runs without a store). The one way every job writes its output.

A *result* is the set of arrays under one prefix (``probes/<run>/<hook>``,
``analysis/<name>``, ``patching/<sweep>``). Nothing already written is replaced unless
the writer is asked to (``replace=True``), and that is checked when the writer is made,
before any work; a replaced result is replaced whole: arrays of the earlier result that
this one does not write are removed when it finishes.

    with ResultWriter.for_store(store, "analysis/mine", replace=False) as w:
        w.write("scores", scores, ("layer", "head"), {"rows": 100})
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from ..errors import ConfigError, NotWritableError, ResultExistsError, StoreExistsError
from .base import StoreLike
from .format import walk_arrays
from .lock import check_unlocked, store_lock
from .nodes import check_groups

__all__ = ["ResultWriter", "write_result", "check_writable"]

_UNWRITABLE_FIX = "make it writable, or copy the store to a folder you can write"


def check_writable(path: str, what: str, fix: str = _UNWRITABLE_FIX) -> None:
    """Refuse, before any work, to write ``what`` at ``path`` (a file or folder, which may
    not exist yet) where nothing can be written: a small file is made and removed in the
    deepest folder of ``path`` that exists (on object storage: under ``path``)."""
    from ..location import existing_folder, filesystem, is_url, normalize, write_probe

    path = normalize(path)
    folder = path
    if not is_url(path):
        try:
            folder = existing_folder(path)
        except NotADirectoryError as e:
            raise NotWritableError(
                f"Cannot write {what} to '{path}': '{e.filename}' is a file, not a folder; "
                "pass another path."
            ) from None
    try:
        if is_url(path):
            fs, p = filesystem(path)
            probe = f"{p.rstrip('/')}/.actstore-write-check"
            fs.touch(probe)
            fs.rm(probe)
        else:
            write_probe(folder)
    except OSError as e:
        raise NotWritableError(
            f"Cannot write {what} to '{path}' ({e.strerror or e}); {fix}."
        ) from None


def _checked(
    name: str, data: Any, dims: Sequence[str], attrs: Mapping[str, Any] | None
) -> np.ndarray:
    """``data`` as an array, once its dims and attrs are known to fit (before anything is written)."""
    data = np.asarray(data)
    if len(dims) != data.ndim:
        raise ConfigError(
            f"Result '{name}': {len(dims)} dimension names for an array of {data.ndim} dimensions."
        )
    try:
        json.dumps(dict(attrs or {}), allow_nan=True)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"Result '{name}': its attributes are not JSON ({e}); pass numbers, strings, "
            "lists and dicts."
        ) from None
    return data


def _arrays_under(group: zarr.Group, prefix: str) -> list[str]:
    """Paths (relative to ``group``) of the arrays at or under ``prefix``."""
    if prefix not in group:
        return []
    node = group[prefix]
    return (
        [prefix] if isinstance(node, zarr.Array) else [f"{prefix}/{p}" for p in walk_arrays(node)]
    )


class ResultWriter:
    """Writes one result: the arrays under ``prefix`` of the Zarr group at ``path``."""

    def __init__(
        self,
        path: str,
        prefix: str,
        replace: bool = False,
        what: str | None = None,
        fix: str = "pass overwrite=True (--overwrite) to replace it, or write it elsewhere",
        store: StoreLike | None = None,
        unwritable_fix: str = _UNWRITABLE_FIX,
    ):
        self.path, self.prefix, self.replace, self.store = path, prefix.strip("/"), replace, store
        self.written: list[str] = []
        existing = self.existing()
        what = what or f"the result {self.prefix!r}"
        if existing and not replace:
            raise ResultExistsError(
                f"'{path}' already holds {what} "
                f"({self.prefix}: {len(existing)} array{'s' * (len(existing) != 1)}); {fix}."
            )
        # a run writing the store (cache, resume, repair): refused before the job's work
        if self._locks:
            check_unlocked(path, "run this job again")
        check_writable(f"{path.rstrip('/')}/{self.prefix}", what, unwritable_fix)

    @property
    def _locks(self) -> bool:
        """Whether writing takes the store's lock: results of a local store (see lock.py)."""
        from ..location import is_url

        return self.store is not None and not is_url(self.path)

    def _lock(self) -> AbstractContextManager[None]:
        """The store's lock, held while an array is written or removed (never while a cache,
        resume or repair writes the store); another job's short write is waited for."""
        return store_lock(self.path, wait=30) if self._locks else nullcontext()

    @classmethod
    def for_store(
        cls, store: StoreLike, name: str, replace: bool = False, **kw: Any
    ) -> ResultWriter:
        """A writer of results/<name> of ``store`` (which sees each array as it is written)."""
        return cls(store.path, f"results/{name}", replace, store=store, **kw)

    def existing(self) -> list[str]:
        """Arrays of this result already in the group."""
        if self.store is not None:
            return _arrays_under(self.store.group, self.prefix)
        if not os.path.exists(self.path):
            return []
        try:
            group = zarr.open_group(self.path, mode="r")
        except Exception:
            raise StoreExistsError(
                f"'{self.path}' exists and is not a Zarr group; write the results to another "
                "path (--out)."
            ) from None
        return _arrays_under(group, self.prefix)

    def write(
        self, name: str, data: Any, dims: Sequence[str], attrs: Mapping[str, Any] | None = None
    ) -> zarr.Array:
        """Write ``prefix/name``. Refused if it exists (from an earlier result) and this
        writer may not replace, or if this writer already wrote it."""
        key = f"{self.prefix}/{name}" if name else self.prefix
        data = _checked(key, data, dims, attrs)
        if key in self.written:
            raise ResultExistsError(
                f"Result array '{key}' was already written by this run; give each array its own name."
            )
        with self._lock():
            root = zarr.open_group(self.path, mode="a")
            check_groups(root.store, self.path, key)
            if key in root and not self.replace:
                raise ResultExistsError(
                    f"'{self.path}' already holds '{key}'; pass overwrite=True to replace it."
                )
            # a lost chunk is missing, never the fill value
            arr = root.create_array(
                key,
                shape=data.shape,
                dtype=data.dtype,
                dimension_names=tuple(dims),
                overwrite=True,
                compressors=[ZstdCodec(level=0), Crc32cCodec()],  # checked on read
                config={"write_empty_chunks": True},
            )
            arr[...] = data
            if attrs:
                arr.attrs.update(dict(attrs))
        self.written.append(key)
        self._refresh()
        return arr

    def finish(self) -> list[str]:
        """Remove the arrays of the earlier result that this one did not write (so a
        replaced result holds nothing stale); the paths written."""
        stale = [k for k in self.existing() if k not in self.written]
        if stale:
            with self._lock():
                root = zarr.open_group(self.path, mode="r+")
                for key in stale:
                    del root[key]
            self._refresh()
        return list(self.written)

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.finish()

    def _refresh(self) -> None:
        if self.store is not None:
            self.store.group = zarr.open_group(self.path, mode="r")


def write_result(
    store: StoreLike,
    name: str,
    data: Any,
    dims: Sequence[str],
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> zarr.Array:
    """One array at results/<name> of ``store``; an existing one is replaced only with overwrite=True."""
    return ResultWriter.for_store(
        store, name, overwrite, fix="pass overwrite=True to replace it"
    ).write("", data, dims, attrs)
