"""The Zarr store's format: layout, creation, the `done` manifest, checked reads and
per-shard stats (the reader, :class:`ActivationStore`, is in reader.py; the codecs,
:func:`parse_codec` among them, in codecs.py).

The write unit is the shard: ``rows_per_shard`` rows (a multiple of
``rows_per_chunk``; one inner chunk = ``rows_per_chunk`` rows). Every array's shard k,
then stats row k, are written whole, fsynced, and only then ``done[k]``, a Zarr array
with chunk size 1, so that each process writes its own manifest objects.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import zarr
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import Crc32cCodec, ZstdCodec

from ..errors import ConfigError, CorruptChunkError, StoreDamagedError
from ..sites import SiteShape
from ..stats import Moments
from .codecs import parse_codec
from .meta import FORMAT_VERSION, READABLE_VERSIONS, Layout, StoreMeta
from .typed import array_at, attrs_of, dimension_names

__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "Layout",
    "plan_layout",
    "parse_codec",
    "create_store",
    "is_store",
    "estimate_bytes",
    "INDEX_ARRAYS",
    "read_checked",
    "merge_partials",
    "finalize_stats",
    "walk_arrays",
]

_SHARD_TARGET_BYTES = 256 * 2**20  # all sites of one shard together: bounds the writer's buffer
INDEX_ARRAYS = {"tokens": "int32", "doc": "int64", "doc_pos": "int32", "mask": "bool"}


def row_bytes(shapes: Mapping[str, SiteShape], storage_dtype: str) -> int:
    item = np.dtype(storage_dtype).itemsize
    return sum(int(np.prod(s.shape)) * item for s in shapes.values())


def estimate_bytes(
    n_rows: int, seq_len: int, shapes: Mapping[str, SiteShape], storage_dtype: str, mask: bool
) -> int:
    """Uncompressed size of the store's arrays (an upper bound when compressed)."""
    index = seq_len * (4 + 8 + 4 + (1 if mask else 0))
    return n_rows * (row_bytes(shapes, storage_dtype) + index)


def plan_layout(
    n_rows: int,
    seq_len: int,
    batch_size: int,
    bytes_per_row: int,
    rows_per_chunk: int | None = None,
    rows_per_shard: int | None = None,
) -> Layout:
    rpc = min(rows_per_chunk or batch_size, n_rows)
    if rows_per_shard is None:
        per_chunk = max(bytes_per_row * rpc, 1)
        rows_per_shard = rpc * max(1, _SHARD_TARGET_BYTES // per_chunk)
        rows_per_shard = min(rows_per_shard, -(-n_rows // rpc) * rpc)
    if rpc < 1 or rows_per_shard % rpc:
        raise ConfigError(
            f"rows_per_shard ({rows_per_shard}) must be a positive multiple of rows_per_chunk ({rpc})."
        )
    return Layout(n_rows, seq_len, rpc, rows_per_shard)


def is_store(path: str) -> bool:
    try:
        return "actstore" in zarr.open_group(path, mode="r").attrs
    except Exception:
        return False


def row_array(
    group: zarr.Group,
    name: str,
    shape: tuple[int, ...],
    row_chunk: int,
    row_shard: int,
    dtype: str,
    dims: Sequence[str],
    compressors: Any,
    fill: Any = 0,
) -> zarr.Array:
    """A new array of ``group`` chunked (and sharded, where ``row_shard`` differs) along rows, whole otherwise."""
    chunks = (row_chunk,) + tuple(shape[1:])
    shards = (row_shard,) + tuple(shape[1:]) if row_shard != row_chunk else None
    serializer: Any = "auto"
    # pcodec: typed numbers in, bytes out
    if compressors and isinstance(compressors[0], ArrayBytesCodec):
        serializer, compressors = compressors[0], compressors[1:]
    return group.create_array(
        name,
        shape=shape,
        chunks=chunks,
        shards=shards,
        dtype=dtype,
        dimension_names=tuple(dims),
        serializer=serializer,
        compressors=_checked(compressors),
        fill_value=fill,
        config={"write_empty_chunks": True},
    )


def _checked(compressors: list[Any] | None) -> list[Any]:
    """Every chunk ends with a crc32c checksum, so damage is caught on read."""
    return [*(compressors or []), Crc32cCodec()]


def create_store(
    path: str,
    meta: StoreMeta,
    layout: Layout,
    shapes: Mapping[str, SiteShape],
    storage_dtype: str,
    codec: str,
    mask: bool,
    plan: np.ndarray | None = None,
    plan_fields: Sequence[str] = (),
) -> zarr.Group:
    """Create every array of an empty store. ``path`` must not exist. ``plan``: the
    corpus plan, int64 (boundary, field), boundary k = shard k's start, the last one
    the end of the last row (see corpus/plan.py); -1 where unknown."""
    root = zarr.open_group(path, mode="w-")
    n, L, rpc, rps = layout.n_rows, layout.seq_len, layout.rows_per_chunk, layout.rows_per_shard
    index_codec = [ZstdCodec(level=3)]
    for name, dtype in INDEX_ARRAYS.items():
        if name != "mask" or mask:
            row_array(
                root,
                name,
                (n, L),
                rpc,
                rps,
                dtype,
                ("row", "pos"),
                index_codec,
                False if dtype == "bool" else 0,
            )
    acts_codec = parse_codec(codec)
    # unwritten rows are NaN, not zeros (format version 2)
    fill = float("nan") if meta.format_version >= 2 else 0.0
    for hook, s in shapes.items():
        row_array(
            root,
            f"acts/{hook}",
            (n,) + s.shape,
            rpc,
            rps,
            storage_dtype,
            ("row",) + s.dims,
            acts_codec,
            fill,
        )
    columns: dict[str, list[Any]] = {}
    width = 0
    for hook, s in shapes.items():
        if s.feature_shape is not None:
            columns[hook] = [width, list(s.feature_shape)]
            width += 1 + 2 * int(np.prod(s.feature_shape))
    if columns:
        partials = root.create_array(
            "stats/partials",
            shape=(layout.n_shards, width),
            chunks=(1, width),
            dtype="float64",
            dimension_names=("shard", "column"),
            fill_value=0.0,
            compressors=_checked(None),
            config={"write_empty_chunks": True},
        )
        partials.attrs["columns"] = columns
    root.create_array(
        "done",
        shape=(layout.n_shards,),
        chunks=(1,),
        dtype="bool",
        fill_value=False,
        dimension_names=("shard",),
        compressors=_checked(None),
        config={"write_empty_chunks": True},
    )
    if plan is not None:
        arr = root.create_array(
            "plan",
            shape=plan.shape,
            chunks=plan.shape,
            dtype="int64",
            dimension_names=("boundary", "field"),
            fill_value=-1,
            compressors=_checked(None),
        )
        arr[...] = plan
        arr.attrs["fields"] = list(plan_fields)
    root.attrs["actstore"] = meta.to_dict()
    return root


def shard_key(arr: zarr.Array, k: int) -> str:
    """The store key of the object holding shard k of ``arr``."""
    return f"{arr.path}/{arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))}"


def shard_exists(arr: zarr.Array, k: int, empty: bool = False) -> bool:
    """Whether shard k's object is there and not empty (zarr reads an empty shard object
    as a missing one: fill values); ``empty``: whether it is there and empty."""
    from zarr.core.sync import sync

    try:
        return (sync(arr.store.getsize(shard_key(arr, k))) == 0) == empty
    except FileNotFoundError:
        return False


def clear_shard(arr: zarr.Array, k: int) -> None:
    """Delete shard k's object: rewriting a damaged one in place would make zarr
    read it first (to merge a partial update) and fail on the damage."""
    from zarr.core.sync import sync

    sync(arr.store.delete(shard_key(arr, k)))


def read_checked(arr: zarr.Array, rows: slice, layout: Layout, path: str) -> np.ndarray:
    """``arr[rows]``, with a clear error naming the shard that fails its checksum or
    is missing (zarr would read a missing one as zeros)."""
    a, b, _ = rows.indices(arr.shape[0])
    rps = layout.rows_per_shard
    shards = range(a // rps, (b - 1) // rps + 1) if b > a else range(0)
    for k in shards:
        if not shard_exists(arr, k):
            raise _corrupt(arr, k, layout, path, "its object is missing or empty")
    try:
        return np.asarray(arr[rows])
    except ValueError as e:
        if "checksum" not in str(e):
            raise
        for k in shards:  # which one: read them one by one
            try:
                arr[max(a, k * rps) : min(b, (k + 1) * rps)]
            except ValueError as e_k:
                raise _corrupt(arr, k, layout, path, f"it fails its checksum ({e_k})") from e
        raise


def _corrupt(arr: zarr.Array, k: int, layout: Layout, path: str, why: str) -> CorruptChunkError:
    lo, hi = layout.shard_rows(k)
    return CorruptChunkError(
        f"'{arr.path}' rows {lo}..{hi - 1} (shard {k}) of '{path}' is damaged: {why}. "
        f"Run `actstore verify {path} --repair` to recompute it."
    )


def fsync_shard(root_path: str, arr: zarr.Array, k: int) -> None:
    """fsync the object holding shard k of ``arr`` (local stores)."""
    p = os.path.join(root_path, shard_key(arr, k))
    for target in (p, os.path.dirname(p)):  # the file, then the rename in its folder
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_partial_files(path: str) -> int:
    """Delete temporary '*.partial' files that a killed write left behind."""
    n = 0
    for d, _, files in os.walk(path):
        for f in files:
            if f.endswith(".partial"):
                os.remove(os.path.join(d, f))
                n += 1
    return n


def remove_store(path: str) -> None:
    shutil.rmtree(path)


def walk_arrays(group: zarr.Group) -> list[str]:
    """Paths of every array under ``group``; a node whose metadata is damaged is a StoreDamagedError."""
    try:
        out = [name for name, _ in group.arrays()]
        for gname, sub in group.groups():
            out += [f"{gname}/{p}" for p in walk_arrays(sub)]
    except (ValueError, KeyError, TypeError) as e:  # what zarr makes of a damaged zarr.json
        where = getattr(group.store, "root", group.store)
        raise StoreDamagedError(
            f"'{group.path}' of the store at '{where}' holds a node whose metadata is damaged "
            f"({type(e).__name__}: {str(e)[:80]}); `actstore verify STORE` names it: delete it "
            "and rerun the job that wrote it."
        ) from None
    return out


def merge_partials(partials: zarr.Array, hook: str, done: np.ndarray) -> Moments:
    """The moments of ``hook`` over the done shards, merged in shard order from stats/partials."""
    columns = attrs_of(partials)["columns"]
    if hook not in columns:
        raise ConfigError(
            f"Site {hook} has no stats (attention patterns have no single position axis)."
        )
    offset, fshape = columns[hook]
    fshape = tuple(fshape)
    width = 1 + 2 * int(np.prod(fshape))
    block = np.asarray(partials[:, offset : offset + width])
    total = Moments.empty(fshape)
    for k in np.flatnonzero(done):
        total = total.merge(Moments.unpack(block[k], fshape))
    return total


def finalize_stats(group: zarr.Group, hooks: Sequence[str]) -> None:
    """Write stats/<hook>/{count,mean,M2} from the partials of a complete store.
    Idempotent: recomputed from the partials each time."""
    if "stats/partials" not in group:
        return
    done = np.asarray(array_at(group, "done")[:])
    partials = array_at(group, "stats/partials")

    def finish(hook: str) -> None:
        m = merge_partials(partials, hook, done)
        feat_dims = dimension_names(array_at(group, f"acts/{hook}"))[1:]
        count, mean, m2 = stats_arrays(
            group, hook, m.mean.shape, tuple(d for d in feat_dims if d != "pos")
        )
        count[()], mean[...], m2[...] = m.count, m.mean, m.m2

    # a site's arrays are its own: several sites at once, as an object store's round trips dominate
    # there (12 sites on loopback S3: 5.4 s one after the other)
    todo = [h for h in hooks if h in attrs_of(partials)["columns"]]
    with ThreadPoolExecutor(min(8, max(1, len(todo)))) as pool:
        list(pool.map(finish, todo))


def stats_arrays(
    group: zarr.Group, hook: str, feature_shape: tuple[int, ...], feat_dims: tuple[str, ...]
) -> tuple[zarr.Array, zarr.Array, zarr.Array]:
    """Create (or replace) stats/<hook>/{count,mean,M2}, float64 per feature, empty; one
    chunk each, always written, with a checksum (see nodes.chunk_present)."""
    g = group.require_group(f"stats/{hook}")
    kw: dict[str, Any] = dict(
        overwrite=True, compressors=_checked(None), config={"write_empty_chunks": True}
    )
    return (
        g.create_array("count", shape=(), dtype="int64", **kw),
        g.create_array(
            "mean", shape=feature_shape, dtype="float64", dimension_names=feat_dims, **kw
        ),
        g.create_array("M2", shape=feature_shape, dtype="float64", dimension_names=feat_dims, **kw),
    )
