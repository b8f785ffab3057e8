"""The Zarr store: layout, creation, the `done` manifest, per-shard stats, and the
:class:`ActivationStore` reader.

The write unit is the shard: ``rows_per_shard`` rows (a multiple of
``rows_per_chunk``; one inner chunk = ``rows_per_chunk`` rows). Every array's shard k,
then stats row k, are written whole, fsynced, and only then ``done[k]``, a Zarr array
with chunk size 1, so that each process writes its own manifest objects.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import zarr
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from .errors import ConfigError, CorruptChunkError, RowsNotDoneError, StoreNotFoundError
from .sites import SiteShape
from .stats import Moments

__all__ = ["FORMAT_VERSION", "Layout", "plan_layout", "parse_codec", "create_store", "ActivationStore",
           "is_store", "estimate_bytes", "INDEX_ARRAYS"]

FORMAT_VERSION = 1
_SHARD_TARGET_BYTES = 256 * 2**20  # all sites of one shard together: bounds the writer's buffer
INDEX_ARRAYS = {"tokens": "int32", "doc": "int64", "doc_pos": "int32", "mask": "bool"}


@dataclass(frozen=True)
class Layout:
    n_rows: int
    seq_len: int
    rows_per_chunk: int  # inner chunk: the unit of reading
    rows_per_shard: int  # shard: the unit of writing and of `done`

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.rows_per_shard)

    def shard_rows(self, k: int) -> tuple[int, int]:
        a = k * self.rows_per_shard
        return a, min(a + self.rows_per_shard, self.n_rows)

    def to_dict(self) -> dict[str, int]:
        return {"n_rows": self.n_rows, "seq_len": self.seq_len, "rows_per_chunk": self.rows_per_chunk,
                "rows_per_shard": self.rows_per_shard, "n_shards": self.n_shards}


def row_bytes(shapes: Mapping[str, SiteShape], storage_dtype: str) -> int:
    item = np.dtype(storage_dtype).itemsize
    return sum(int(np.prod(s.shape)) * item for s in shapes.values())


def estimate_bytes(n_rows: int, seq_len: int, shapes: Mapping[str, SiteShape], storage_dtype: str, mask: bool) -> int:
    """Uncompressed size of the store's arrays (an upper bound when compressed)."""
    index = seq_len * (4 + 8 + 4 + (1 if mask else 0))
    return n_rows * (row_bytes(shapes, storage_dtype) + index)


def plan_layout(n_rows: int, seq_len: int, batch_size: int, bytes_per_row: int,
                rows_per_chunk: int | None = None, rows_per_shard: int | None = None) -> Layout:
    rpc = min(rows_per_chunk or batch_size, n_rows)
    if rows_per_shard is None:
        per_chunk = max(bytes_per_row * rpc, 1)
        rows_per_shard = rpc * max(1, _SHARD_TARGET_BYTES // per_chunk)
        rows_per_shard = min(rows_per_shard, -(-n_rows // rpc) * rpc)
    if rpc < 1 or rows_per_shard % rpc:
        raise ConfigError(f"rows_per_shard ({rows_per_shard}) must be a positive multiple of rows_per_chunk ({rpc}).")
    return Layout(n_rows, seq_len, rpc, rows_per_shard)


def parse_codec(spec: str) -> list[Any] | None:
    """'none' | 'zstd[:level]' | 'blosc-lz4' | 'blosc-zstd[:level]' | 'blosc-zstd-bitshuffle[:level]' |
    'pcodec[:level]'. A list of zarr codecs: compressors, or for pcodec (which encodes
    typed numbers, so it replaces the bytes serializer) the serializer alone."""
    name, _, level_s = spec.partition(":")
    try:
        level = int(level_s) if level_s else 1
    except ValueError:
        raise ConfigError(f"Codec '{spec}': level '{level_s}' is not an integer.") from None
    if name == "none":
        return None
    if name == "zstd":
        return [ZstdCodec(level=level)]
    if name == "blosc-lz4":
        return [BloscCodec(cname="lz4", clevel=level if level_s else 5, shuffle="shuffle")]
    if name in ("blosc-zstd", "blosc-zstd-bitshuffle"):
        return [BloscCodec(cname="zstd", clevel=level, shuffle="bitshuffle" if name.endswith("bitshuffle") else "shuffle")]
    if name == "pcodec":
        try:
            import pcodec  # noqa: F401
            from zarr.codecs.numcodecs import PCodec
        except ImportError:
            raise ConfigError(f"Codec '{spec}' needs the pcodec package; pip install 'actstore[pcodec]' "
                              "(or pcodec), or choose another --codec.") from None
        import warnings

        with warnings.catch_warnings():  # zarr warns that numcodecs codecs are outside the v3 spec
            warnings.simplefilter("ignore")
            return [PCodec(level=level if level_s else 8)]
    raise ConfigError(f"Unknown codec '{spec}'; expected none, zstd[:L], blosc-lz4, blosc-zstd[:L], "
                      "blosc-zstd-bitshuffle[:L] or pcodec[:L].")


def is_store(path: str) -> bool:
    try:
        return "actstore" in zarr.open_group(path, mode="r").attrs
    except Exception:
        return False


def _array(group: zarr.Group, name: str, shape: tuple[int, ...], row_chunk: int, row_shard: int, dtype: str,
           dims: Sequence[str], compressors: Any, fill: Any = 0) -> zarr.Array:
    chunks = (row_chunk,) + tuple(shape[1:])
    shards = (row_shard,) + tuple(shape[1:]) if row_shard != row_chunk else None
    serializer: Any = "auto"
    if compressors and isinstance(compressors[0], ArrayBytesCodec):  # pcodec: typed numbers in, bytes out
        serializer, compressors = compressors[0], compressors[1:]
    return group.create_array(
        name, shape=shape, chunks=chunks, shards=shards, dtype=dtype, dimension_names=tuple(dims),
        serializer=serializer, compressors=_checked(compressors), fill_value=fill, config={"write_empty_chunks": True},
    )


def _checked(compressors: list[Any] | None) -> list[Any]:
    """Every chunk ends with a crc32c checksum, so damage is caught on read."""
    return [*(compressors or []), Crc32cCodec()]


def create_store(path: str, meta: Mapping[str, Any], layout: Layout, shapes: Mapping[str, SiteShape],
                 storage_dtype: str, codec: str, mask: bool) -> zarr.Group:
    """Create every array of an empty store. ``path`` must not exist."""
    root = zarr.open_group(path, mode="w-")
    n, L, rpc, rps = layout.n_rows, layout.seq_len, layout.rows_per_chunk, layout.rows_per_shard
    index_codec = [ZstdCodec(level=3)]
    for name, dtype in INDEX_ARRAYS.items():
        if name != "mask" or mask:
            _array(root, name, (n, L), rpc, rps, dtype, ("row", "pos"), index_codec, False if dtype == "bool" else 0)
    acts_codec = parse_codec(codec)
    for hook, s in shapes.items():
        _array(root, f"acts/{hook}", (n,) + s.shape, rpc, rps, storage_dtype, ("row",) + s.dims, acts_codec)
    columns: dict[str, list[Any]] = {}
    width = 0
    for hook, s in shapes.items():
        if s.feature_shape is not None:
            columns[hook] = [width, list(s.feature_shape)]
            width += 1 + 2 * int(np.prod(s.feature_shape))
    if columns:
        partials = root.create_array("stats/partials", shape=(layout.n_shards, width), chunks=(1, width),
                                     dtype="float64", dimension_names=("shard", "column"), fill_value=0.0,
                                     compressors=_checked(None), config={"write_empty_chunks": True})
        partials.attrs["columns"] = columns
    root.create_array("done", shape=(layout.n_shards,), chunks=(1,), dtype="bool", fill_value=False,
                      dimension_names=("shard",), compressors=_checked(None), config={"write_empty_chunks": True})
    root.attrs["actstore"] = dict(meta)
    return root


def shard_key(arr: zarr.Array, k: int) -> str:
    """The store key of the object holding shard k of ``arr``."""
    return f"{arr.path}/{arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))}"


def shard_exists(arr: zarr.Array, k: int) -> bool:
    from zarr.core.sync import sync

    return bool(sync(arr.store.exists(shard_key(arr, k))))


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
            raise _corrupt(arr, k, layout, path, "its object is missing")
    try:
        return np.asarray(arr[rows])
    except ValueError as e:
        if "checksum" not in str(e):
            raise
        for k in shards:  # which one: read them one by one
            try:
                arr[max(a, k * rps):min(b, (k + 1) * rps)]
            except ValueError as e_k:
                raise _corrupt(arr, k, layout, path, f"it fails its checksum ({e_k})") from e
        raise


def _corrupt(arr: zarr.Array, k: int, layout: Layout, path: str, why: str) -> CorruptChunkError:
    lo, hi = layout.shard_rows(k)
    return CorruptChunkError(f"'{arr.path}' rows {lo}..{hi - 1} (shard {k}) of '{path}' is damaged: {why}. "
                             f"Run `actstore verify {path} --repair` to recompute it.")


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


class ActivationStore:
    """Read a store: sites, activations of row ranges (numpy or torch), tokens,
    documents, string tokens, metadata and stats. Rows whose shard is not done
    raise RowsNotDoneError rather than returning unfinished data."""

    def __init__(self, group: zarr.Group, path: str):
        self.group = group
        self.path = path
        self.metadata: dict[str, Any] = dict(group.attrs["actstore"])
        self.layout = Layout(**{k: v for k, v in self.metadata["layout"].items() if k != "n_shards"})
        self._tokenizer: Any = None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "ActivationStore":
        path = os.fspath(path)
        try:
            group = zarr.open_group(path, mode="r")
        except Exception:
            raise StoreNotFoundError(f"No store at '{path}'. Create one with `actstore cache {path} --model ... --dataset ...`.") from None
        if "actstore" not in group.attrs:
            raise StoreNotFoundError(f"'{path}' is a Zarr group but not an actstore store (no 'actstore' metadata).")
        return cls(group, path)

    # --- what is there ---------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        return [s["hook"] for s in self.metadata["sites"]]

    @property
    def n_rows(self) -> int:
        return self.layout.n_rows

    @property
    def done(self) -> np.ndarray:
        """bool (shard,): the manifest, read fresh each time."""
        return np.asarray(self.group["done"][:])

    @property
    def rows_done(self) -> int:
        d = self.done
        return sum(b - a for k, (a, b) in enumerate(map(self.layout.shard_rows, range(len(d)))) if d[k])

    @property
    def is_complete(self) -> bool:
        return bool(self.done.all())

    def site(self, hook: str) -> zarr.Array:
        """The site's Zarr array, lazily (no done check)."""
        if hook not in self.sites:
            from .sites import _unknown
            raise _unknown(hook, self.sites)
        return self.group[f"acts/{hook}"]  # type: ignore[return-value]

    def __getitem__(self, hook: str) -> zarr.Array:
        return self.site(hook)

    # --- rows ------------------------------------------------------------------
    def check_done(self, rows: slice) -> None:
        """Raise RowsNotDoneError unless every shard holding ``rows`` is done."""
        a, b, _ = rows.indices(self.n_rows)
        if b <= a:
            return
        rps = self.layout.rows_per_shard
        ks = np.arange(a // rps, (b - 1) // rps + 1)
        missing = ks[~self.done[ks]]
        if len(missing):
            lo, hi = self.layout.shard_rows(int(missing[0]))
            raise RowsNotDoneError(
                f"Rows {a}..{b - 1} of '{self.path}' include rows not yet written (first: {lo}..{hi - 1}); "
                f"{self.rows_done} of {self.n_rows} rows are done. Finish the run with `actstore cache ... --resume`."
            )

    def _read(self, name: str, rows: slice | int, check_done: bool) -> np.ndarray:
        sl = slice(rows, rows + 1) if isinstance(rows, int) else rows
        if check_done:
            self.check_done(sl)
        out = read_checked(self.group[name], sl, self.layout, self.path)
        return out[0] if isinstance(rows, int) else out

    def acts(self, hook: str, rows: slice | int = slice(None), as_: str = "numpy", check_done: bool = True) -> Any:
        """Activations of ``hook`` for ``rows``: numpy array or torch tensor (row, ...)."""
        self.site(hook)
        out = self._read(f"acts/{hook}", rows, check_done)
        if as_ == "torch":
            import torch
            return torch.from_numpy(np.ascontiguousarray(out))
        return out

    def tokens(self, rows: slice | int = slice(None), check_done: bool = True) -> np.ndarray:
        return self._read("tokens", rows, check_done)

    def doc(self, rows: slice | int = slice(None), check_done: bool = True) -> np.ndarray:
        return self._read("doc", rows, check_done)

    def doc_pos(self, rows: slice | int = slice(None), check_done: bool = True) -> np.ndarray:
        return self._read("doc_pos", rows, check_done)

    def mask(self, rows: slice | int = slice(None), check_done: bool = True) -> np.ndarray:
        """bool (row, pos): real tokens. All True for packed stores."""
        if "mask" not in self.group:
            sl = slice(rows, rows + 1) if isinstance(rows, int) else rows
            a, b, _ = sl.indices(self.n_rows)
            out = np.ones((b - a, self.layout.seq_len), bool)
            return out[0] if isinstance(rows, int) else out
        return self._read("mask", rows, check_done)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from .resources import tokenizer_for
            self._tokenizer = tokenizer_for(self.metadata["model"]["name"])
        return self._tokenizer

    def str_tokens(self, row: int) -> list[str]:
        tok = self.tokenizer
        return [tok.decode([int(t)]) for t in self.tokens(row)]

    def iter_blocks(self, hooks: Sequence[str], rows: slice = slice(None), block_rows: int | None = None
                    ) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
        """Stream ``hooks`` over ``rows`` in blocks of whole inner chunks (default:
        one shard), so a store larger than memory is read once, in order. Yields
        (row slice, {hook: array (row, ...)}); the slice is absolute."""
        a, b, _ = rows.indices(self.n_rows)
        self.check_done(slice(a, b))
        step = block_rows or self.layout.rows_per_shard
        for hook in hooks:
            self.site(hook)
        start = a
        while start < b:
            stop = min((start // step + 1) * step, b)  # block edges on multiples of step
            sl = slice(start, stop)
            yield sl, {hook: read_checked(self.group[f"acts/{hook}"], sl, self.layout, self.path) for hook in hooks}
            start = stop

    # --- results -----------------------------------------------------------------
    def save_result(self, name: str, data: np.ndarray, dims: Sequence[str], attrs: Mapping[str, Any] | None = None,
                    overwrite: bool = True) -> zarr.Array:
        """Write a job's output to results/<name> (e.g. 'probes/blocks.3.hook_resid_post/weight')
        with dimension names; attrs are JSON-serialisable provenance."""
        if len(dims) != np.ndim(data):
            raise ConfigError(f"Result '{name}': {len(dims)} dimension names for an array of {np.ndim(data)} dimensions.")
        root = zarr.open_group(self.path, mode="r+")
        arr = root.create_array(f"results/{name}", shape=np.shape(data), dtype=np.asarray(data).dtype,
                                dimension_names=tuple(dims), overwrite=overwrite)
        arr[...] = data
        if attrs:
            arr.attrs.update(dict(attrs))
        self.group = zarr.open_group(self.path, mode="r")
        return arr

    def load_result(self, name: str) -> zarr.Array:
        key = f"results/{name}"
        if key not in self.group:
            raise StoreNotFoundError(f"Store '{self.path}' has no result '{name}'; run the job that writes it first.")
        return self.group[key]  # type: ignore[return-value]

    def results(self) -> list[str]:
        """Names of every array under results/."""
        return sorted(_walk_arrays(self.group["results"])) if "results" in self.group else []

    # --- stats -----------------------------------------------------------------
    def stats(self, hook: str) -> Moments:
        """Per-feature count, mean and M2 (float64) over the done rows of ``hook``
        (positions outside ``mask`` excluded), merged in shard order."""
        self.site(hook)
        if f"stats/{hook}/mean" in self.group:
            g = self.group[f"stats/{hook}"]
            return Moments(int(g["count"][()]), np.asarray(g["mean"][...]), np.asarray(g["M2"][...]))
        return merge_partials(self.group, hook, self.done)

    def __repr__(self) -> str:
        return f"ActivationStore('{self.path}', {self.rows_done}/{self.n_rows} rows, sites={self.sites})"

    # --- jobs over the store (thin: the work lives in loader.py and probes.py) -------
    def loader(self, sites: str | Sequence[str], batch_size: int, shuffle: bool = True, seed: int = 0,
               **kw: Any) -> Any:
        """Token-level torch batches {hook: (batch, *feature), "row", "pos"} for training;
        see :class:`actstore.loader.ActivationLoader` for the options."""
        from .loader import ActivationLoader
        return ActivationLoader(self, sites, batch_size, shuffle, seed, **kw)

    def load_probe(self, hook: str, name: str | None = None) -> Any:
        """The probe saved under results/probes/<name>/<hook> by `actstore probe`
        (``name`` may be left out when there is only one); see :class:`actstore.probes.Probe`."""
        from .probes import load_probe
        return load_probe(self, hook, name)


def _walk_arrays(group: zarr.Group) -> list[str]:
    out = [name for name, _ in group.arrays()]
    for gname, sub in group.groups():
        out += [f"{gname}/{p}" for p in _walk_arrays(sub)]
    return out


def merge_partials(group: zarr.Group, hook: str, done: np.ndarray) -> Moments:
    if "stats/partials" not in group:
        raise ConfigError(f"Site {hook} has no stats (attention patterns have no single position axis).")
    partials = group["stats/partials"]
    columns = partials.attrs["columns"]
    if hook not in columns:
        raise ConfigError(f"Site {hook} has no stats (attention patterns have no single position axis).")
    offset, fshape = columns[hook]
    fshape = tuple(fshape)
    width = 1 + 2 * int(np.prod(fshape))
    block = np.asarray(partials[:, offset:offset + width])
    total = Moments.empty(fshape)
    for k in np.flatnonzero(done):
        total = total.merge(Moments.unpack(block[k], fshape))
    return total


def finalize_stats(group: zarr.Group, hooks: Sequence[str]) -> None:
    """Write stats/<hook>/{count,mean,M2} from the partials of a complete store.
    Idempotent: recomputed from the partials each time."""
    if "stats/partials" not in group:
        return
    done = np.asarray(group["done"][:])
    for hook in hooks:
        if hook not in group["stats/partials"].attrs["columns"]:
            continue
        m = merge_partials(group, hook, done)
        feat_dims = tuple(group[f"acts/{hook}"].metadata.dimension_names[1:])
        feat_dims = tuple(d for d in feat_dims if d != "pos")
        g = group.require_group(f"stats/{hook}")
        g.create_array("count", shape=(), dtype="int64", overwrite=True)[()] = m.count
        g.create_array("mean", shape=m.mean.shape, dtype="float64", dimension_names=feat_dims, overwrite=True)[...] = m.mean
        g.create_array("M2", shape=m.m2.shape, dtype="float64", dimension_names=feat_dims, overwrite=True)[...] = m.m2
