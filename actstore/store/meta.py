"""A store's metadata, typed: :class:`StoreMeta` and its parts, read from and written
to ``attrs["actstore"]`` of the store's root group.

``StoreMeta.from_dict(d).to_dict() == d``, keys in the same order, for every store
this actstore writes (so zarr.json is the same bytes); keys that a part does not know
(written by another version) are kept in its ``extra`` and written back after the
known ones. ``from_dict`` refuses a format version this actstore cannot read.

    meta = actstore.open("acts.zarr").meta
    meta.model.n_layers, meta.corpus.seq_len, meta.layout.rows_per_shard, meta.hooks
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from ..errors import StoreFormatError
from ..model_info import ModelInfo, check_identity
from ..sites import Site

__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "Layout",
    "StoreMeta",
    "CorpusMeta",
    "SiteMeta",
    "check_version",
]

# Version 2: activation arrays have fill value NaN (version 1: 0), so that rows not yet
# written read as NaN outside actstore too (plain zarr, xarray.open_zarr).
FORMAT_VERSION = 2  # what this actstore writes
READABLE_VERSIONS = (1, 2)  # what it reads; both are written the same way


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
        return {
            "n_rows": self.n_rows,
            "seq_len": self.seq_len,
            "rows_per_chunk": self.rows_per_chunk,
            "rows_per_shard": self.rows_per_shard,
            "n_shards": self.n_shards,
        }


P = TypeVar("P")


def _frozen(v: Any) -> Any:
    """JSON value -> the same with lists as tuples (the parts are frozen)."""
    if isinstance(v, list):
        return tuple(_frozen(x) for x in v)
    if isinstance(v, Mapping):
        return {k: _frozen(x) for k, x in v.items()}
    return v


def _json(v: Any) -> Any:
    """The inverse of :func:`_frozen`: tuples back to lists, parts to dicts."""
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _json(x) for k, x in v.items()}
    return v


def _known(cls: type, d: Mapping[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the fields of dataclass ``cls`` found in ``d``, the other keys); a required field
    that ``d`` lacks is a StoreFormatError naming it."""
    if not isinstance(d, Mapping):
        raise StoreFormatError(
            f"Store metadata '{where}' is {type(d).__name__}, not a mapping; the store is damaged."
        )
    names = [f.name for f in fields(cls) if f.name != "extra"]
    missing = [
        f.name
        for f in fields(cls)
        if f.name != "extra"
        and f.name not in d
        and f.default is MISSING
        and f.default_factory is MISSING
    ]
    if missing:
        raise StoreFormatError(
            f"Store metadata '{where}' lacks {', '.join(missing)}; the store is damaged or was "
            "not written by actstore. Recreate it with `actstore cache ... --overwrite`."
        )
    return {n: d[n] for n in names if n in d}, {k: v for k, v in d.items() if k not in names}


class _Part:
    """from_dict/to_dict for a frozen dataclass with an ``extra`` field; fields listed in
    ``_optional`` are left out of the dict when None (absent in the source)."""

    _optional: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls: type[P], d: Mapping[str, Any], where: str = "") -> P:
        known, extra = _known(cls, d, where or cls.__name__)
        return cls(**{k: _frozen(v) for k, v in known.items()}, extra=dict(extra))  # type: ignore[call-arg]

    def to_dict(self) -> dict[str, Any]:
        out = {
            f.name: _json(getattr(self, f.name))
            for f in fields(self)  # type: ignore[arg-type]
            if f.name != "extra"
            and not (f.name in self._optional and getattr(self, f.name) is None)
        }
        return {**out, **_json(self.extra)}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class CorpusMeta(_Part):
    """Where the rows come from; equal corpus metadata means equal rows."""

    kind: str  # 'hub' | 'files' | 'demo' | 'python-list' | 'synthetic'
    split: str
    text_field: str
    config_name: str | None
    revision: str | None
    seq_len: int
    packing: str  # 'pack' | 'document'
    source: Any  # hub name, file paths, 'actstore-demo', or a description of the list
    sha256: str | None = None  # python lists: the documents' hash
    files: tuple[Mapping[str, Any], ...] | None = None  # local files: path and size of each
    bos_policy: str = ""
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    vocab_size: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    _optional: ClassVar[tuple[str, ...]] = ("sha256", "files")

    @property
    def dataset(self) -> str | list[str]:
        """The source as ``CacheConfig.dataset`` takes it (a name, or a list of files)."""
        return self.source if isinstance(self.source, str) else list(self.source)


@dataclass(frozen=True)
class SiteMeta(_Part):
    """One stored site: its hook, layer, kept heads and the array's dims and shape."""

    hook: str
    layer: int | None
    heads: tuple[int, ...] | None
    dims: tuple[str, ...]  # ('row', 'pos', 'd_model'), ...
    shape: tuple[int, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def site(self) -> Site:
        return Site(self.hook, self.layer, self.heads)


def check_version(version: Any, where: str) -> int:
    """``version`` if this actstore reads it, else a StoreFormatError naming the fix."""
    if isinstance(version, int) and version in READABLE_VERSIONS:
        return version
    from ..compat import versions

    reads = ", ".join(map(str, READABLE_VERSIONS))
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise StoreFormatError(
            f"Store '{where}' is format version {version}, written by a later actstore; this actstore "
            f"({versions().get('actstore', '?')}) reads format versions {reads}. "
            "Upgrade actstore (pip install -U actstore) to read it."
        )
    raise StoreFormatError(
        f"Store '{where}' has format version {version!r}; this actstore reads format versions "
        f"{reads}. The store is damaged or was not written by actstore."
    )


@dataclass(frozen=True)
class StoreMeta:
    """Everything ``attrs["actstore"]`` records, typed; see DESIGN.md, store format."""

    format_version: int
    model: ModelInfo
    corpus: CorpusMeta
    layout: Layout
    sites: tuple[SiteMeta, ...]
    storage_dtype: str
    codec: str
    software: Mapping[str, str]
    command_line: str | None
    created: str
    engine: str = "bridge"  # what ran the hooks: the bridge, or the plain transformers model ("hf")
    # model keys ModelInfo does not know
    model_extra: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "the store") -> StoreMeta:
        """Typed metadata from ``attrs["actstore"]``; ``where`` (the store's path) names it
        in errors. A format version this actstore cannot read is a StoreFormatError."""
        if not isinstance(d, Mapping) or "format_version" not in d:
            raise StoreFormatError(
                f"Store '{where}' has no format_version in its metadata; it is damaged or was "
                "not written by actstore."
            )
        check_version(d["format_version"], where)
        known, extra = _known(cls, d, "actstore")
        model, model_extra = _known(ModelInfo, known["model"], "model")
        if "source" in model_extra:  # ModelInfo.to_dict writes in_memory as "source"
            model["source"] = model_extra.pop("source")
        layout, _ = _known(Layout, known["layout"], "layout")  # n_shards follows from the rest
        return cls(
            **{
                **known,
                "model": ModelInfo.from_dict(model),
                "corpus": CorpusMeta.from_dict(known["corpus"], "corpus"),
                "layout": Layout(**layout),
                "sites": tuple(
                    SiteMeta.from_dict(s, f"sites[{i}]") for i, s in enumerate(known["sites"])
                ),
                "software": dict(known["software"]),
                "model_extra": model_extra,
                "extra": extra,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """``attrs["actstore"]``: the inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "model": {**self.model.to_dict(), **_json(self.model_extra)},
            "corpus": self.corpus.to_dict(),
            "layout": self.layout.to_dict(),
            "sites": [s.to_dict() for s in self.sites],
            "storage_dtype": self.storage_dtype,
            "codec": self.codec,
            "software": dict(self.software),
            "command_line": self.command_line,
            "created": self.created,
            # absent: the bridge, as before it existed
            **({} if self.engine == "bridge" else {"engine": self.engine}),
        }
        return {**out, **_json(self.extra)}

    # --- questions every reader asks --------------------------------------------
    def finish_hint(self, path: str) -> str:
        """What to do about this store's rows not done, right now: while a live run holds its
        lock (it is writing them), wait for it; else repair from its metadata, or its own
        command resumed (either takes over a stale lock)."""
        from .lock import lock_holder

        cmd = self.command_line or ""
        if cmd.startswith("actstore cache"):
            try:
                words = shlex.split(cmd)
            except ValueError:  # not written by shlex.join: as it is
                words = cmd.split()
            if len(words) > 2 and not words[2].startswith("-"):
                words[2] = path  # the store where it is now (it may have been moved or copied)
            again = f"`{shlex.join([w for w in words if w not in ('--overwrite', '--resume')] + ['--resume'])}`"
        elif cmd.startswith("actstore.cache("):
            cmd = re.sub(
                r"^actstore\.cache\(out=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")",
                lambda _: f"actstore.cache(out={path!r}",
                cmd,
            )
            again = f"`{cmd}` again with resume=True"
        else:
            again = "the same actstore.cache(...) call with resume=True"
        finish = f"finish it with `actstore verify {shlex.quote(path)} --repair` (its own config), or {again}"
        holder = lock_holder(path)
        if holder is None:
            return finish
        if holder.stale:
            return (
                f"{finish} (either takes over the stale lock {holder.path}: {holder.who} is gone)"
            )
        if not holder.writing:
            return (
                f"{finish} (its lock file {holder.path} cannot be read: damaged, unless a run is taking it this "
                "instant; it is taken over 10 s after it was written)"
            )
        return (
            f"a run is writing it ({holder.who}, lock {holder.path}): wait for that run to finish, then try "
            f"again (repairing or resuming now would be refused); {holder.if_gone(finish)}"
        )

    @property
    def hooks(self) -> list[str]:
        """The stored sites' hook names, in the store's order."""
        return [s.hook for s in self.sites]

    def site(self, hook: str) -> SiteMeta:
        for s in self.sites:
            if s.hook == hook:
                return s
        from ..sites import unknown_site

        raise unknown_site(hook, self.hooks)

    _SAME_RUN: ClassVar[tuple[str, ...]] = (
        "corpus",
        "layout",
        "sites",
        "storage_dtype",
        "codec",
        "engine",
    )

    def run_diffs(self, other: StoreMeta) -> list[str]:
        """What makes ``other`` (this run's plan) another run than this store's: model
        identity, corpus, layout, sites, storage dtype, codec, engine. The format version is not
        compared: the versions this actstore reads differ only in what unwritten rows
        read as, so resuming or repairing an older store writes the bytes its run would have."""
        diffs = check_identity(self.model.to_dict(), other.model.to_dict(), also=("hooks",))
        mine, theirs = self.to_dict(), other.to_dict()
        for key in self._SAME_RUN:
            if mine.get(key, "bridge") != theirs.get(key, "bridge"):  # only engine may be absent
                diffs.append(
                    f"{key}: store has {mine.get(key, 'bridge')!r}, this run has {theirs.get(key, 'bridge')!r}"
                )
        return diffs
