"""Whole-shard writes at the disk's speed, in zarr's own format.

Writing a shard through zarr (``arr[a:b] = x``) runs every inner chunk through its
event loop: several copies of the data and one thread for all arrays, about a
quarter of the disk's speed. actstore's arrays use one fixed family of codec chains
(bytes, little-endian; an optional compressor with a fast encoder in the codec
registry, store/codecs.py; crc32c; sharded with the index at the end), so the
writer encodes a whole shard itself, byte for byte what zarr would write (tests
compare the objects), and writes it in one go from the caller's thread, so that
many arrays can be written at once:

* without a compressor, chunk data is written straight from the array's memory
  (no copy); the compressors and the file writes release the GIL;
* local stores: a temporary file, fsync (when durable), rename, fsync of the
  folder; other stores: ``store.set`` with the encoded object.

Readers are plain zarr. An array with any other codec chain is written by zarr.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.core.metadata import ArrayV3Metadata

from .. import _faults
from ..store.codecs import fast_encoder
from ..store.typed import write_unit_shape

__all__ = ["ShardEncoder", "encoder_for", "write_object", "write_rows", "object_path"]

_MAX_U64 = np.uint64(2**64 - 1)
Piece = Any  # a bytes-like object, written as is


def _crc(data: Any) -> bytes:
    return np.uint32(google_crc32c.value(np.frombuffer(data, np.uint8))).tobytes()


def _chain(codecs: Sequence[dict[str, Any]]) -> list[Callable[[Any], Any]] | None:
    """Compressors between 'bytes' (little-endian) and a final 'crc32c', each with its
    fast encoder in the codec registry (store/codecs.py); None if the chain is anything else."""
    names = [c["name"] for c in codecs]
    if len(names) < 2 or names[0] != "bytes" or names[-1] != "crc32c":
        return None
    if codecs[0].get("configuration", {}).get("endian", "little") != "little":
        return None
    out = []
    for spec in codecs[1:-1]:
        fn = fast_encoder(spec)
        if fn is None:
            return None
        out.append(fn)
    return out


@dataclass(frozen=True)
class ShardEncoder:
    """Encodes shard k of one array (its rows, in the array's dtype) into the object
    zarr would write for ``arr[shard rows] = data``."""

    n_rows: int  # the array's first dimension
    shard_rows: int  # rows per shard (the write unit)
    chunk_rows: int  # rows per inner chunk
    dtype: np.dtype
    fill: Any
    compressors: tuple[Callable[[Any], Any], ...]
    sharded: bool

    def encode(self, data: np.ndarray, k: int) -> list[Piece]:
        a = k * self.shard_rows
        want = min(self.shard_rows, self.n_rows - a)
        if data.shape[0] != want:
            raise ValueError(f"shard {k} has {want} rows; got {data.shape[0]}")
        data = np.ascontiguousarray(data, dtype=self.dtype.newbyteorder("<"))
        if not self.sharded:
            return self._chunk(data)
        pieces: list[Piece] = []
        n_chunks = self.shard_rows // self.chunk_rows
        index = np.full((n_chunks, 2), _MAX_U64, "<u8")  # chunks past the array's end are absent
        offset = 0
        for c in range(-(-want // self.chunk_rows)):
            piece = self._chunk(data[c * self.chunk_rows : (c + 1) * self.chunk_rows])
            size = sum(memoryview(p).nbytes for p in piece)
            index[c] = (offset, size)
            offset += size
            pieces += piece
        raw = index.tobytes()
        return pieces + [raw, _crc(raw)]

    def _chunk(self, rows: np.ndarray) -> list[Piece]:
        """One inner chunk: rows padded with the fill value to a whole chunk (zarr
        writes edge chunks whole), then the compressors, then crc32c."""
        if rows.shape[0] < self.chunk_rows:
            full = np.full((self.chunk_rows, *rows.shape[1:]), self.fill, rows.dtype)
            full[: len(rows)] = rows
            rows = full
        data: Any = rows.reshape(-1).view(np.uint8)
        for fn in self.compressors:
            data = fn(data)
        return [data, _crc(data)]


def encoder_for(arr: zarr.Array) -> ShardEncoder | None:
    """The encoder of ``arr``'s shards, or None when its codecs are not the ones
    actstore creates (such arrays are written through zarr)."""
    if not isinstance(arr.metadata, ArrayV3Metadata):
        return None  # zarr v2 arrays: not the ones actstore creates
    codecs: list[dict[str, Any]] = [c.to_dict() for c in arr.metadata.codecs]
    chunks = write_unit_shape(arr)  # the shard shape when sharded
    if any(c != s for c, s in zip(chunks[1:], arr.shape[1:])):
        return None  # only the row axis is split
    sharded = len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed"
    if sharded:
        cfg = codecs[0]["configuration"]
        index = [c["name"] for c in cfg["index_codecs"]]
        if cfg.get("index_location", "end") != "end" or index != ["bytes", "crc32c"]:
            return None
        inner, codecs = tuple(cfg["chunk_shape"]), list(cfg["codecs"])
        if inner[1:] != tuple(arr.shape[1:]) or chunks[0] % inner[0]:
            return None
        chunk_rows = inner[0]
    else:
        chunk_rows = chunks[0]
    compressors = _chain(codecs)
    if compressors is None:
        return None
    return ShardEncoder(
        arr.shape[0],
        chunks[0],
        chunk_rows,
        np.dtype(arr.dtype),
        arr.metadata.fill_value,
        tuple(compressors),
        sharded,
    )


def object_path(arr: zarr.Array, key: str) -> str | None:
    """The file behind store key ``key`` for local stores, else None."""
    root = getattr(arr.store, "root", None)
    if root is None or not isinstance(arr.store, zarr.storage.LocalStore):
        return None
    return os.path.join(str(root), key)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_object(arr: zarr.Array, key: str, pieces: Sequence[Piece], durable: bool) -> None:
    """Write one object made of ``pieces``: atomically (temporary file + rename) and,
    when ``durable``, fsynced with its folder, on local stores; with ``store.set``
    on others (object stores write whole objects atomically)."""
    path = object_path(arr, key)
    if path is None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buf = default_buffer_prototype().buffer.from_bytes(
            b"".join(bytes(memoryview(p)) for p in pieces)
        )
        sync(arr.store.set(key, buf))
        return
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.partial"  # the suffix zarr's LocalStore uses; resume removes strays
    try:
        with open(tmp, "wb", buffering=0) as f:
            for p in pieces:
                view = memoryview(p).cast("B")
                while view:  # a raw write may be short
                    view = view[f.write(view) :]
            _faults.slow_io()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if durable:
        _fsync(folder)


def write_rows(
    arr: zarr.Array,
    root_path: str,
    k: int,
    data: np.ndarray,
    durable: bool,
    enc: ShardEncoder | None,
) -> None:
    """Write ``data`` as the whole of write unit k of ``arr`` (shard k, or chunk k when
    unsharded), fsynced when ``durable``, with ``enc = encoder_for(arr)``; arrays
    without one are written through zarr."""
    from ..store.format import fsync_shard, shard_key

    if enc is not None:
        write_object(arr, shard_key(arr, k), enc.encode(data, k), durable)
        return
    rows = write_unit_shape(arr)[0]
    arr[k * rows : k * rows + len(data)] = data
    if durable and object_path(arr, shard_key(arr, k)) is not None:
        fsync_shard(root_path, arr, k)
