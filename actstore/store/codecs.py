"""The codec registry: every activation codec actstore offers, registered once.

One :class:`Codec` per ``--codec`` name: its zarr codecs (``factory``), its levels, the
optional package it needs, and the shard writer's decision for it (``fast``: the
numcodecs encoder that writes its chunks byte for byte as zarr does, or
:data:`NO_FAST_PATH`, with the reason, when zarr writes them). Parsing a codec spec,
its error messages, the CLI help, the shard writer (capture/shardio.py), the tests and
the benchmarks all read this table, so that a codec cannot be half-added.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numcodecs
from zarr.codecs import BloscCodec, ZstdCodec

from ..errors import ConfigError

__all__ = [
    "Codec",
    "FastEncoder",
    "NO_FAST_PATH",
    "register",
    "registered",
    "lookup",
    "parse_codec",
    "fast_encoder",
    "codec_usage",
]

Encode = Callable[[Any], Any]  # bytes-like in, bytes-like out, as zarr calls numcodecs
# a compressor's zarr.json configuration -> its encoder
FastEncoder = Callable[[Mapping[str, Any]], Encode]


class _NoFastPath:
    """The shard writer's explicit "no": zarr writes this codec's arrays."""

    def __repr__(self) -> str:
        return "NO_FAST_PATH"


NO_FAST_PATH = _NoFastPath()


@dataclass(frozen=True)
class Codec:
    """One activation codec. ``factory(level)``: its zarr codecs (None: no compressor; a
    typed serializer such as pcodec's first). ``levels``: the (lowest, highest) level
    its library accepts, None if it takes none. ``zarr_name``: its compressor's name in
    zarr.json (None: no compressor). ``fast``: see the module docstring; ``why_slow``
    says why there is no fast path."""

    name: str
    factory: Callable[[int], list[Any] | None]
    levels: tuple[int, int] | None
    default_level: int
    zarr_name: str | None
    fast: FastEncoder | _NoFastPath
    why_slow: str = ""
    requires: str | None = None  # the optional package (import name) it needs
    install: str = ""  # how to install it
    sample_levels: tuple[int, ...] = ()  # levels measured beside the default (benchmark, tests)

    def __post_init__(self) -> None:
        if not (self.fast is NO_FAST_PATH or callable(self.fast)):
            raise TypeError(
                f"codec {self.name!r}: fast must be an encoder factory or NO_FAST_PATH, not {self.fast!r}"
            )
        if (self.fast is NO_FAST_PATH) != bool(self.why_slow):
            raise TypeError(f"codec {self.name!r}: give why_slow exactly when fast is NO_FAST_PATH")
        for level in (
            (self.default_level, *self.sample_levels) if self.levels else self.sample_levels
        ):
            if self.levels is None or not self.levels[0] <= level <= self.levels[1]:
                raise TypeError(
                    f"codec {self.name!r}: level {level} is outside its levels {self.levels}"
                )

    @property
    def usage(self) -> str:
        """How the spec is written: ``zstd[:L]``, ``none``."""
        return f"{self.name}[:L]" if self.levels else self.name

    @property
    def samples(self) -> tuple[str, ...]:
        """Specs worth measuring: the default level, then ``sample_levels``."""
        return (self.name, *(f"{self.name}:{level}" for level in self.sample_levels))


_REGISTRY: dict[str, Codec] = {}


def register(codec: Codec) -> Codec:
    """Add ``codec`` to the table. A name registered twice, or a compressor (zarr name)
    given two different fast encoders, raises."""
    if codec.name in _REGISTRY:
        raise ValueError(f"codec {codec.name!r} is already registered")
    for other in _REGISTRY.values():
        if (
            codec.zarr_name is not None
            and other.zarr_name == codec.zarr_name
            and other.fast is not codec.fast
        ):
            raise ValueError(
                f"codec {codec.name!r}: compressor {codec.zarr_name!r} already has the fast path of "
                f"{other.name!r}; give it the same one"
            )
    _REGISTRY[codec.name] = codec
    return codec


def registered() -> Iterator[Codec]:
    """The registered codecs, in the order of registration."""
    return iter(tuple(_REGISTRY.values()))


def codec_usage(sep: str = " | ") -> str:
    return sep.join(c.usage for c in _REGISTRY.values())


def lookup(spec: str) -> tuple[Codec, int, bool]:
    """(codec, level, whether the level was given) of ``spec``, 'name[:level]', checked."""
    name, _, level_s = spec.partition(":")
    codec = _REGISTRY.get(name)
    if codec is None:
        names = list(_REGISTRY.values())
        listing = ", ".join(c.usage for c in names[:-1]) + f" or {names[-1].usage}"
        raise ConfigError(f"Unknown codec '{spec}'; expected {listing}.")
    try:
        level = int(level_s) if level_s else codec.default_level
    except ValueError:
        raise ConfigError(f"Codec '{spec}': level '{level_s}' is not an integer.") from None
    if level_s and codec.levels is not None and not codec.levels[0] <= level <= codec.levels[1]:
        lo, hi = codec.levels
        raise ConfigError(
            f"Codec '{spec}': level {level} is outside {name}'s levels {lo}..{hi}; "
            "pass a level in that range."
        )
    if codec.requires and not _importable(codec.requires):
        raise ConfigError(
            f"Codec '{spec}' needs the {codec.requires} package; {codec.install}, "
            "or choose another --codec."
        )
    return codec, level, bool(level_s)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def parse_codec(spec: str) -> list[Any] | None:
    """The zarr codecs of ``spec`` (see :func:`codec_usage`): compressors, or for pcodec
    (which encodes typed numbers, so it replaces the bytes serializer) the serializer
    alone; None for no compression."""
    codec, level, _ = lookup(spec)
    return codec.factory(level)


def fast_encoder(compressor: Mapping[str, Any]) -> Encode | None:
    """The shard writer's encoder for one compressor of a zarr.json codec chain, or
    None when no registered codec writes it fast (zarr then writes the array)."""
    for codec in _REGISTRY.values():
        if codec.zarr_name == compressor["name"]:
            return (
                None
                if isinstance(codec.fast, _NoFastPath)
                else codec.fast(compressor.get("configuration", {}))
            )
    return None


def _zstd_fast(cfg: Mapping[str, Any]) -> Encode:
    return numcodecs.Zstd(level=cfg["level"], checksum=cfg.get("checksum", False)).encode


def _blosc_fast(cfg: Mapping[str, Any]) -> Encode:
    shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[cfg["shuffle"]]
    return numcodecs.Blosc(
        cname=cfg["cname"],
        clevel=cfg["clevel"],
        shuffle=shuffle,
        blocksize=cfg["blocksize"],
        typesize=cfg["typesize"],
    ).encode


def _raw(
    cfg: Mapping[str, Any],
) -> Encode:  # no compressor: the writer writes the array's own bytes
    return lambda data: data


def _blosc(cname: str, shuffle: str) -> Callable[[int], list[Any]]:
    return lambda level: [BloscCodec(cname=cname, clevel=level, shuffle=shuffle)]  # type: ignore[arg-type]


def _pcodec(level: int) -> list[Any]:
    from zarr.codecs.numcodecs import PCodec

    with warnings.catch_warnings():  # zarr warns that numcodecs codecs are outside the v3 spec
        warnings.simplefilter("ignore")
        return [PCodec(level=level)]


_BLOSC_LEVELS = (0, 9)
register(Codec("none", lambda level: None, None, 1, None, _raw))
register(
    Codec(
        "zstd",
        lambda level: [ZstdCodec(level=level)],
        (-131072, 22),
        1,
        "zstd",
        _zstd_fast,
        sample_levels=(3,),
    )
)
register(Codec("blosc-lz4", _blosc("lz4", "shuffle"), _BLOSC_LEVELS, 5, "blosc", _blosc_fast))
register(Codec("blosc-zstd", _blosc("zstd", "shuffle"), _BLOSC_LEVELS, 1, "blosc", _blosc_fast))
register(
    Codec(
        "blosc-zstd-bitshuffle",
        _blosc("zstd", "bitshuffle"),
        _BLOSC_LEVELS,
        1,
        "blosc",
        _blosc_fast,
    )
)
register(
    Codec(
        "pcodec",
        _pcodec,
        (0, 12),
        8,
        "numcodecs.pcodec",
        NO_FAST_PATH,
        why_slow="a typed serializer, not a bytes compressor: zarr encodes it",
        requires="pcodec",
        install="pip install 'actstore[pcodec]' (or pcodec)",
        sample_levels=(4,),
    )
)
