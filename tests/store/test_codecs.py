"""The codec registry: each codec registered once, each with its shard-writer decision,
and the one table behind parsing, its messages and the CLI help."""

from __future__ import annotations

import pytest

from actstore.capture.config import CacheConfig
from actstore.errors import ConfigError
from actstore.store.codecs import (
    NO_FAST_PATH,
    Codec,
    codec_usage,
    lookup,
    parse_codec,
    register,
    registered,
)


def _zstd(level):
    return parse_codec(f"zstd:{level}")


def test_a_name_registered_twice_raises():
    zstd = next(c for c in registered() if c.name == "zstd")
    with pytest.raises(ValueError, match="'zstd' is already registered"):
        register(zstd)
    with pytest.raises(ValueError, match="already registered"):
        register(Codec("none", lambda level: None, None, 1, None, NO_FAST_PATH, why_slow="test"))
    assert [c.name for c in registered()].count("zstd") == 1


def test_a_codec_without_a_fast_path_decision_cannot_be_made():
    with pytest.raises(TypeError, match="fast"):
        Codec("zstd-x", _zstd, (0, 22), 1, "zstd")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="fast must be an encoder factory or NO_FAST_PATH"):
        Codec("zstd-x", _zstd, (0, 22), 1, "zstd", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="give why_slow exactly when fast is NO_FAST_PATH"):
        Codec("zstd-x", _zstd, (0, 22), 1, "zstd", NO_FAST_PATH)
    with pytest.raises(TypeError, match=r"level 30 is outside its levels \(0, 22\)"):
        Codec("zstd-x", _zstd, (0, 22), 30, "zstd", lambda cfg: bytes)
    with pytest.raises(TypeError, match="level 3 is outside its levels None"):
        Codec("none-x", lambda level: None, None, 1, None, lambda cfg: bytes, sample_levels=(3,))


def test_one_compressor_cannot_get_two_fast_paths():
    with pytest.raises(ValueError, match="compressor 'zstd' already has the fast path of 'zstd'"):
        register(Codec("zstd-x", _zstd, (0, 22), 1, "zstd", lambda cfg: bytes))
    assert "zstd-x" not in [c.name for c in registered()]


def test_parsing_and_help_list_every_registered_codec():
    usage = [c.usage for c in registered()]
    assert usage[:2] == ["none", "zstd[:L]"] and len(usage) == len(set(usage)) >= 6
    with pytest.raises(
        ConfigError, match=r"Unknown codec 'lzma'; expected none, zstd\[:L\], .* or pcodec\[:L\]\."
    ):
        parse_codec("lzma")
    help_text = CacheConfig.__dataclass_fields__["codec"].metadata["help"]
    assert help_text == codec_usage() and all(u in help_text for u in usage)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("zstd:x", r"Codec 'zstd:x': level 'x' is not an integer\."),
        ("zstd:23", r"level 23 is outside zstd's levels -131072\.\.22; pass a level in that range"),
        ("blosc-lz4:10", r"level 10 is outside blosc-lz4's levels 0\.\.9"),
        ("pcodec:13", r"level 13 is outside pcodec's levels 0\.\.12"),
        ("blosc-foo:50", r"Unknown codec 'blosc-foo:50'"),
    ],
)
def test_bad_specs_are_refused_with_the_fix(spec, message):
    with pytest.raises(ConfigError, match=message):
        lookup(spec)


def test_the_benchmark_measures_every_registered_codec():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_codecs.py"
    spec = importlib.util.spec_from_file_location("bench_codecs", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert [spec.partition(":")[0] for spec in bench.CODECS if ":" not in spec] == [
        c.name for c in registered()
    ]
    # the levels docs/store-format.md shows
    assert "zstd:3" in bench.CODECS and "pcodec:4" in bench.CODECS


def test_a_missing_optional_package_is_named_with_its_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pcodec", None)  # import pcodec raises ImportError
    with pytest.raises(
        ConfigError,
        match=r"Codec 'pcodec:4' needs the pcodec package; pip install 'actstore\[pcodec\]' "
        r"\(or pcodec\), or choose another --codec\.",
    ):
        parse_codec("pcodec:4")


def test_levels_and_defaults():
    assert lookup("zstd") == (lookup("zstd")[0], 1, False)
    assert lookup("blosc-lz4")[1:] == (5, False) and lookup("blosc-lz4:3")[1:] == (3, True)
    assert parse_codec("none") is None
    assert (
        parse_codec("blosc-zstd-bitshuffle:2")[0].to_dict()["configuration"]["shuffle"]
        == "bitshuffle"
    )
