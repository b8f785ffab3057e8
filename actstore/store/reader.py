"""The store's reader: :class:`ActivationStore`. Rows whose shard is not done raise
RowsNotDoneError; a finished chunk that fails its checksum raises CorruptChunkError."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import zarr

from ..errors import RowIndexError, RowsNotDoneError, StoreNotFoundError
from ..stats import Moments
from .format import Layout, read_checked, walk_arrays
from .meta import StoreMeta
from .nodes import (
    damaged,
    expected_nodes,
    list_keys,
    looks_like_store,
    node_problem,
    parents,
    root_damaged,
)
from .results import write_result
from .site_stats import merged_stats, site_stats, stats_unreadable
from .typed import attrs_of, group_at
from .view import ArrayView, array_name

__all__ = ["ActivationStore", "open_store", "not_a_store", "merged_stats", "stats_unreadable"]

_NEW_STORE = "`actstore cache NEW.zarr --model ... --dataset ...`"


def _what_is_there(path: str) -> str | None:
    """What a local ``path`` that is no store is (None: nothing there, or a URL)."""
    from .. import location

    if location.is_url(path) or not os.path.lexists(path):
        return None
    if not os.path.isdir(path):
        return "is a file, not an actstore store (a store is a folder written by `actstore cache`)"
    names = sorted(os.listdir(path))
    if not names:
        return ""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"is a folder but not an actstore store (it holds {shown}, and no store metadata)"


def not_a_store(path: str, what: str | None = None) -> StoreNotFoundError:
    """The error for opening ``path``, where no store is: nothing there (create one there),
    an empty folder (``actstore cache`` writes into it), or something else (``what`` it is:
    a file, a folder, a Zarr group; ``actstore cache`` refuses to replace it, so the fix is
    another path)."""
    what = what if what is not None else _what_is_there(path)
    if what is None:
        return StoreNotFoundError(
            f"No store at '{path}'. Create one with `actstore cache {path} --model ... --dataset ...`."
        )
    if what == "":
        return StoreNotFoundError(
            f"'{path}' is an empty folder, not a store yet. Pass the path of a store, or create "
            f"one there with `actstore cache {path} --model ... --dataset ...`."
        )
    return StoreNotFoundError(
        f"'{path}' {what}. Pass the path of a store, or create one at a new path with "
        f"{_NEW_STORE} (it will not write into '{path}', even with --overwrite)."
    )


class ActivationStore:
    """Read a store: sites, activations of row ranges (numpy or torch), tokens,
    documents, string tokens, metadata and stats. Rows whose shard is not done
    raise RowsNotDoneError rather than returning unfinished data."""

    def __init__(self, group: zarr.Group, path: str):
        self.group = group
        self.path = path
        # refuses metadata it cannot read
        self.meta: StoreMeta = StoreMeta.from_dict(attrs_of(group)["actstore"], path)
        # as stored; ``meta`` is the typed view
        self.metadata: dict[str, Any] = dict(attrs_of(group)["actstore"])
        self.layout: Layout = self.meta.layout
        self._tokenizer: Any = None
        self._arrays: dict[str, zarr.Array] = {}

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ActivationStore:
        path = os.fspath(path)
        try:
            group = zarr.open_group(path, mode="r")
        except Exception:
            if looks_like_store(path):  # the folder is there, its root metadata is not
                raise root_damaged(path) from None
            raise not_a_store(path) from None
        if "actstore" not in group.attrs:
            if looks_like_store(path, children=True):
                raise root_damaged(path, "has no 'actstore' metadata")
            raise not_a_store(
                path, "is a Zarr group but not an actstore store (it has no 'actstore' metadata)"
            )
        return cls(group, path)

    # --- checked arrays ----------------------------------------------------------
    @cached_property
    def expected(self) -> dict[str, bytes]:
        """zarr.json of every node the store's metadata defines (see nodes.py)."""
        # older stores have none
        return expected_nodes(self.meta, plan=bool(list_keys(self.group.store, "plan/")))

    def check_metadata(self) -> None:
        """Raise StoreDamagedError unless the zarr.json of every group and array the store's
        metadata defines is there and as defined (reads no chunk; ``actstore verify`` reads all)."""
        for node, doc in self.expected.items():
            # merged stats: once complete
            if not node.startswith("stats/") or node == "stats/partials":
                problem = node_problem(self.group.store, node, doc)
                if problem is not None:
                    raise damaged(self.path, node, problem)

    def array(self, name: str) -> zarr.Array:
        """The array at ``name`` ('done', 'tokens', 'acts/<hook>', ...), once its metadata and its
        groups' are what the store's own metadata defines; else StoreDamagedError naming the fix."""
        if name not in self._arrays:
            for node in [*parents([name]), name]:
                problem = node_problem(self.group.store, node, self.expected.get(node))
                if problem is not None:
                    raise damaged(self.path, node, problem)
            self._arrays[name] = self.group[name]  # type: ignore[assignment]
        return self._arrays[name]

    # --- what is there ---------------------------------------------------------
    @property
    def sites(self) -> list[str]:
        return self.meta.hooks

    @property
    def n_rows(self) -> int:
        return self.layout.n_rows

    @property
    def done(self) -> np.ndarray:
        """bool (shard,): the manifest, read fresh each time."""
        arr = self.array("done")
        try:
            return np.asarray(arr[:])
        except ValueError as e:
            if "checksum" not in str(e):
                raise
            for k in range(arr.shape[0]):
                try:
                    arr[k]
                except ValueError:
                    lo, hi = self.layout.shard_rows(k)
                    raise damaged(
                        self.path,
                        "done",
                        f"the manifest entry of shard {k} (rows {lo}..{hi - 1}) fails its checksum",
                    ) from e
            raise

    @property
    def rows_done(self) -> int:
        d = self.done
        return sum(
            b - a for k, (a, b) in enumerate(map(self.layout.shard_rows, range(len(d)))) if d[k]
        )

    @property
    def is_complete(self) -> bool:
        return bool(self.done.all())

    def site(self, hook: str) -> zarr.Array:
        """The site's Zarr array, lazily (no done check; ``store[hook]`` checks)."""
        if hook not in self.sites:
            from ..sites import unknown_site

            raise unknown_site(hook, self.sites)
        return self.array(f"acts/{hook}")

    def __getitem__(self, key: str | tuple[str, int]) -> ArrayView:
        """A lazy, checked view of one array: ``store["blocks.5.hook_resid_post"]``,
        ``store["resid_post:5"]``, ``store["resid_post", 5]`` (TransformerLens style) or an
        index array (``store["tokens"]``). Indexing it reads only done rows, or raises
        RowsNotDoneError; see :class:`actstore.store.view.ArrayView`."""
        return ArrayView(self, array_name(self, key))

    # --- rows ------------------------------------------------------------------
    def check_done(self, rows: slice) -> None:
        """Raise RowsNotDoneError unless every shard holding ``rows`` is done."""
        a, b, _ = rows.indices(self.n_rows)
        if b > a:
            rps = self.layout.rows_per_shard
            self.check_shards(np.arange(a // rps, (b - 1) // rps + 1), f"Rows {a}..{b - 1}")

    def check_shards(self, shards: np.ndarray, what: str) -> None:
        """Raise RowsNotDoneError, naming ``what`` was asked, unless every shard is done."""
        missing = shards[~self.done[shards]]
        if len(missing):
            lo, hi = self.layout.shard_rows(int(missing[0]))
            raise RowsNotDoneError(
                f"{what} of '{self.path}' include rows not yet written (first: {lo}..{hi - 1}); "
                f"{self.rows_done} of {self.n_rows} rows are done: the store is incomplete; "
                f"{self.meta.finish_hint(self.path)}."
            )

    def row_slice(self, rows: slice | int) -> slice:
        """``rows`` as a slice; an int row is checked against the store's rows (negative: from the end)."""
        if isinstance(rows, (int, np.integer)):
            r, n = int(rows), self.n_rows
            if not -n <= r < n:
                raise RowIndexError(
                    f"Row {r} is out of range: store '{self.path}' has rows 0..{n - 1} "
                    f"(or -{n}..-1, counted from the end)."
                )
            return slice(r % n, r % n + 1)
        return rows

    def _read(self, name: str, rows: slice | int, check_done: bool) -> np.ndarray:
        sl = self.row_slice(rows)
        if check_done:
            self.check_done(sl)
        out = read_checked(self.array(name), sl, self.layout, self.path)
        return out[0] if not isinstance(rows, slice) else out

    def acts(
        self,
        hook: str,
        rows: slice | int = slice(None),
        as_: str = "numpy",
        check_done: bool = True,
    ) -> Any:
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
        if self.meta.corpus.packing != "document":
            a, b, _ = self.row_slice(rows).indices(self.n_rows)
            out = np.ones((b - a, self.layout.seq_len), bool)
            return out[0] if not isinstance(rows, slice) else out
        return self._read("mask", rows, check_done)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from ..resources import tokenizer_for

            self._tokenizer = tokenizer_for(self.meta.model.name)
        return self._tokenizer

    def str_tokens(self, row: int) -> list[str]:
        tok = self.tokenizer
        return [tok.decode([int(t)]) for t in self.tokens(row)]

    def iter_blocks(
        self, hooks: Sequence[str], rows: slice = slice(None), block_rows: int | None = None
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
            yield (
                sl,
                {
                    hook: read_checked(self.array(f"acts/{hook}"), sl, self.layout, self.path)
                    for hook in hooks
                },
            )
            start = stop

    # --- results -----------------------------------------------------------------
    def save_result(
        self,
        name: str,
        data: np.ndarray,
        dims: Sequence[str],
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> zarr.Array:
        """Write a job's output to results/<name> (e.g. 'analysis/mine/scores') with
        dimension names; attrs are JSON-serialisable provenance. An existing result is
        replaced only with overwrite=True. Several arrays as one result: ResultWriter."""
        return write_result(self, name, data, dims, attrs, overwrite)

    def load_result(self, name: str) -> zarr.Array:
        key = f"results/{name}"
        problem = node_problem(self.group.store, key, None)
        if problem is not None and "missing" in problem:
            raise StoreNotFoundError(
                f"Store '{self.path}' has no result '{name}'; run the job that writes it first."
            )
        if problem is not None:
            raise damaged(self.path, key, problem)
        return self.group[key]  # type: ignore[return-value]

    def results(self) -> list[str]:
        """Names of every array under results/."""
        # checked by verify
        return (
            sorted(walk_arrays(group_at(self.group, "results"))) if "results" in self.group else []
        )

    # --- stats -----------------------------------------------------------------
    def stats(self, hook: str) -> Moments:
        """Per-feature count, mean and M2 (float64) over the done rows of ``hook``
        (positions outside ``mask`` excluded), merged in shard order."""
        return site_stats(self, hook)

    def __repr__(self) -> str:
        return f"ActivationStore('{self.path}', {self.rows_done}/{self.n_rows} rows, sites={self.sites})"

    # --- training batches (the loader is in this package; probes are loaded with Probe.load) ---
    def loader(
        self,
        sites: str | Sequence[str],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        **kw: Any,
    ) -> Any:
        """Token-level torch batches {hook: (batch, *feature), "row", "pos"} for training;
        see :class:`actstore.store.loader.ActivationLoader` for the options."""
        from .loader import ActivationLoader

        return ActivationLoader(self, sites, batch_size, shuffle, seed, **kw)

    def dataloader(
        self,
        sites: str | Sequence[str],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        **kw: Any,
    ) -> Any:
        """:meth:`loader` in a ready ``torch.utils.data.DataLoader`` (with ``state_dict``);
        see :func:`actstore.store.loader.make_dataloader`."""
        from .loader import make_dataloader

        return make_dataloader(self, sites, batch_size, shuffle, seed, **kw)


def open_store(path: str | os.PathLike[str]) -> ActivationStore:
    """Open the store at ``path`` (a folder or an fsspec URL) for reading: ``actstore.open``."""
    return ActivationStore.open(path)
