"""The nodes a store's own metadata defines: the zarr.json of every group and array that
:func:`create_store` (and, once a run completes, :func:`finalize_stats`) writes, made
again in memory from ``attrs["actstore"]``. A reader checks each array's metadata against
them before trusting it, ``verify`` reports every one that is missing, unreadable or
different, and ``verify --repair`` writes them back (the same bytes). Only the root
zarr.json, which holds ``attrs["actstore"]`` itself, cannot be made again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import MemoryStore

from .. import location
from ..corpus import PLAN_FIELDS
from ..errors import StoreDamagedError
from ..sites import SiteShape
from .format import create_store, stats_arrays
from .meta import StoreMeta

__all__ = [
    "expected_nodes",
    "node_problem",
    "read_key",
    "write_key",
    "list_keys",
    "damaged",
    "root_damaged",
    "looks_like_store",
    "site_shapes",
    "group_doc",
    "parents",
    "as_defined",
    "chunk_present",
    "check_groups",
]

# what a store's folder holds, even with its root zarr.json gone
_MARKERS = (
    "zarr.json",
    "done",
    "tokens",
    "acts",
)


def site_shapes(meta: StoreMeta) -> dict[str, SiteShape]:
    """Each site's per-row shape, as the run that made the store probed it."""
    return {s.hook: SiteShape(tuple(s.dims[1:]), tuple(s.shape[1:])) for s in meta.sites}


def expected_nodes(meta: StoreMeta, plan: bool = True) -> dict[str, bytes]:
    """zarr.json bytes of every group and array below the root that a store of ``meta``
    holds once complete (``plan``: with the corpus plan), by node path ('acts/<hook>',
    'stats', 'stats/<hook>/mean', ...)."""
    mem = MemoryStore()
    lay, shapes = meta.layout, site_shapes(meta)
    plan_arr = np.full((lay.n_shards + 1, len(PLAN_FIELDS)), -1, np.int64) if plan else None
    root = create_store(
        mem,  # type: ignore[arg-type]
        meta,
        lay,
        shapes,
        meta.storage_dtype,
        meta.codec,
        meta.corpus.packing == "document",
        plan_arr,
        PLAN_FIELDS,
    )
    for hook, s in shapes.items():
        if s.feature_shape is not None:
            stats_arrays(root, hook, s.feature_shape, tuple(d for d in s.dims if d != "pos"))
    return {
        k[: -len("/zarr.json")]: read_key(mem, k)  # type: ignore[misc]
        for k in list_keys(mem)
        if k.endswith("/zarr.json")
    }


def as_defined(group: zarr.Group, name: str, doc: bytes) -> zarr.Array:
    """The array ``name`` of ``group``'s store read with the metadata ``doc`` (what the
    store's metadata defines) instead of its own zarr.json, which may be lost: its
    chunks are checked before that zarr.json is rebuilt."""
    from zarr.core.array import AsyncArray
    from zarr.storage import StorePath

    return zarr.Array(AsyncArray(json.loads(doc), StorePath(group.store, name)))


def group_doc() -> bytes:
    """The zarr.json of a group without attributes (results/ and the groups under it)."""
    mem = MemoryStore()
    zarr.open_group(mem, mode="w")
    return read_key(mem, "zarr.json")  # type: ignore[return-value]


def list_keys(store: Any, prefix: str = "") -> list[str]:
    """Every key of a zarr store under ``prefix``."""

    async def keys() -> list[str]:
        return [k async for k in store.list_prefix(prefix)]

    return sorted(sync(keys()))


def read_key(store: Any, key: str) -> bytes | None:
    """The bytes of one object, None when it is missing."""
    buf = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def chunk_present(arr: zarr.Array) -> bool:
    """Whether the one chunk of a single-chunk array (the merged stats) is there and not empty."""
    return bool(read_key(arr.store, f"{arr.path}/{arr.metadata.encode_chunk_key((0,) * arr.ndim)}"))


def write_key(store: Any, key: str, data: bytes) -> None:
    sync(store.set(key, default_buffer_prototype().buffer.from_bytes(data)))


def _essential(doc: Any, codecs: bool) -> Any:
    """What a reader relies on in a zarr.json (codec settings by name only, so a store
    written by another zarr version is not taken for a damaged one; ``codecs``: at all)."""
    if not isinstance(doc, dict):
        return doc

    def names(codecs: Any) -> Any:
        if not isinstance(codecs, list):
            return codecs
        return [
            (c.get("name"), names((c.get("configuration") or {}).get("codecs")))
            if isinstance(c, dict)
            else c
            for c in codecs
        ]

    keys = (
        "zarr_format",
        "node_type",
        "shape",
        "data_type",
        "chunk_grid",
        "chunk_key_encoding",
        "fill_value",
        "dimension_names",
        "attributes",
    )
    return {**{k: doc.get(k) for k in keys}, "codecs": names(doc.get("codecs")) if codecs else None}


def parse_doc(raw: bytes) -> tuple[Any, str | None]:
    """(the parsed zarr.json, None) or (None, why it cannot be read)."""
    try:
        return json.loads(raw), None
    except ValueError as e:  # also invalid UTF-8
        return None, f"its metadata (zarr.json) is unreadable ({type(e).__name__}: {str(e)[:80]})"


def node_problem(store: Any, name: str, expected: bytes | None) -> str | None:
    """Why node ``name``'s zarr.json is not to be trusted, or None. ``expected``: what the
    store's metadata defines (None: any readable zarr.json will do)."""
    raw = read_key(store, f"{name}/zarr.json")
    if raw is None:
        return "its metadata (zarr.json) is missing"
    doc, why = parse_doc(raw)
    if why is not None:
        return why
    if not isinstance(doc, dict) or doc.get("node_type") not in ("array", "group"):
        return "its metadata (zarr.json) is not a Zarr node's"
    # their codecs changed in format 2
    merged_stats = name.startswith("stats/") and name != "stats/partials"
    if expected is not None and _essential(doc, not merged_stats) != _essential(
        json.loads(expected), not merged_stats
    ):
        return "its metadata (zarr.json) differs from what the store's own metadata defines"
    return None


def damaged(path: str, name: str, problem: str) -> StoreDamagedError:
    return StoreDamagedError(
        f"Store '{path}' is damaged: '{name}': {problem}. Run `actstore verify {path} --repair`, "
        "which rebuilds it from the store's own metadata and recomputes the rows it cannot rebuild."
    )


def check_groups(store: Any, path: str, name: str) -> None:
    """Raise StoreDamagedError if a node above ``name`` is there but is not a readable Zarr
    group (zarr would fail to write ``name`` under it)."""
    for node in parents([name]):
        raw = read_key(store, f"{node}/zarr.json")
        if raw is None:
            continue
        doc, why = parse_doc(raw)
        if why is None and not (isinstance(doc, dict) and doc.get("node_type") == "group"):
            why = "its metadata (zarr.json) is not a Zarr group's"
        if why is not None:
            raise damaged(path, node, why)


def looks_like_store(path: str, children: bool = False) -> bool:
    """Whether ``path`` holds what a store holds (a root zarr.json, or done/, tokens/, acts/;
    ``children``: one of the latter)."""
    markers = _MARKERS[1:] if children else _MARKERS
    if location.is_url(path):
        return any(location.exists(f"{path.rstrip('/')}/{m}") for m in markers)
    return any(os.path.exists(os.path.join(path, m)) for m in markers)


def _root_problem(path: str) -> str:
    from zarr.storage import FsspecStore, LocalStore

    store = (
        FsspecStore.from_url(path, read_only=True)
        if location.is_url(path)
        else LocalStore(path, read_only=True)
    )
    raw = read_key(store, "zarr.json")
    if raw is None:
        return "is missing"
    return parse_doc(raw)[1] or "is not a Zarr group's metadata"


def root_damaged(path: str, why: str | None = None) -> StoreDamagedError:
    """The error for a store whose root zarr.json is missing or damaged (``why``: found
    by the caller; else read here)."""
    why = (why or _root_problem(path)).replace("its metadata (zarr.json) ", "")
    return StoreDamagedError(
        f"Store '{path}' is damaged: its root metadata (zarr.json) {why}. That file records the model, corpus and "
        "layout the store was made with, so actstore cannot rebuild it from the store: restore it from a backup or "
        f"another copy of the store, or delete '{path}' and rerun the `actstore cache` command that made it."
    )


def parents(names: Iterable[str]) -> list[str]:
    """Every group path above ``names`` (not the root), each once, outermost first."""
    out: dict[str, None] = {}
    for n in names:
        parts = n.split("/")
        for i in range(1, len(parts)):
            out["/".join(parts[:i])] = None
    return list(out)
