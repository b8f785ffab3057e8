"""The fast shard writer writes exactly the objects zarr writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, GzipCodec

from actstore.capture.shardio import encoder_for, write_rows
from actstore.store.codecs import NO_FAST_PATH, registered
from actstore.store.format import parse_codec, plan_layout, row_array, shard_key

# every registered codec with a fast path: at its default and sample levels, and at its highest
FAST = [c for c in registered() if c.fast is not NO_FAST_PATH]
CODECS = [s for c in FAST for s in c.samples] + [
    f"{c.name}:{c.levels[1]}" for c in FAST if c.levels
]
SLOW = [c for c in registered() if c.fast is NO_FAST_PATH]
DTYPES = ["float16", "float32", "int32", "int64", "bool"]
# (rows, rows per chunk, rows per shard): whole shards, an edge shard with a missing
# chunk, an edge chunk, no sharding (shard = chunk), a single short shard
LAYOUTS = [(20, 4, 8), (16, 4, 16), (10, 5, 5), (7, 2, 4), (3, 3, 3), (9, 3, 6)]


def _pair(tmp_path, name, n, rpc, rps, dtype, codec):
    made = []
    for side in ("zarr", "ours"):
        g = zarr.open_group(str(tmp_path / side), mode="a")
        fill = False if dtype == "bool" else 0
        made.append(
            row_array(
                g, name, (n, 6, 3), rpc, rps, dtype, ("row", "pos", "d"), parse_codec(codec), fill
            )
        )
    return made


@pytest.mark.parametrize("codec", CODECS)
def test_encoded_shards_equal_zarr_objects_byte_for_byte(tmp_path, codec):
    rng = np.random.default_rng(0)
    checked = 0
    for dtype in DTYPES:
        for n, rpc, rps in LAYOUTS:
            layout = plan_layout(n, 6, rpc, 1, rpc, rps)
            name = f"{dtype}_{n}_{rpc}_{rps}"
            ref, ours = _pair(
                tmp_path, name, n, layout.rows_per_chunk, layout.rows_per_shard, dtype, codec
            )
            enc = encoder_for(ours)
            assert enc is not None
            x = (rng.standard_normal((n, 6, 3)) * 3).astype(dtype)
            for k in range(layout.n_shards):
                a, b = layout.shard_rows(k)
                ref[a:b] = x[a:b]
                write_rows(ours, str(tmp_path / "ours"), k, x[a:b], durable=True, enc=enc)
                theirs = (tmp_path / "zarr" / shard_key(ref, k)).read_bytes()
                mine = (tmp_path / "ours" / shard_key(ours, k)).read_bytes()
                assert mine == theirs, f"{name} shard {k}"
                checked += 1
            assert np.array_equal(zarr.open_array(str(tmp_path / "ours" / name))[:], x)
    assert checked == len(DTYPES) * 11  # shards over LAYOUTS: 3 + 1 + 2 + 2 + 1 + 2


@pytest.mark.parametrize("codec", SLOW, ids=[c.name for c in SLOW])
def test_codecs_without_a_fast_path_are_written_by_zarr(tmp_path, codec):
    if codec.requires:
        pytest.importorskip(codec.requires)
    (ours,) = _pair(tmp_path, "x", 8, 2, 4, "float32", codec.name)[1:]
    assert encoder_for(ours) is None
    x = np.arange(8 * 18, dtype=np.float32).reshape(8, 6, 3)
    for k in range(2):
        write_rows(ours, str(tmp_path / "ours"), k, x[4 * k : 4 * k + 4], durable=True, enc=None)
    assert np.array_equal(ours[:], x)


def test_wrong_row_count_is_refused(tmp_path):
    (ours,) = _pair(tmp_path, "x", 8, 2, 4, "float32", "none")[1:]
    with pytest.raises(ValueError, match="shard 1 has 4 rows; got 3"):
        encoder_for(ours).encode(np.zeros((3, 6, 3), np.float32), 1)


def test_other_codec_chains_go_through_zarr(tmp_path):
    g = zarr.open_group(str(tmp_path / "g"), mode="w")
    arr = g.create_array(
        "gz",
        shape=(8, 5),
        chunks=(2, 5),
        shards=(4, 5),
        dtype="float32",
        serializer=BytesCodec(),
        compressors=[GzipCodec(), Crc32cCodec()],
    )
    assert encoder_for(arr) is None
    x = np.arange(40, dtype=np.float32).reshape(8, 5)
    for k in range(2):
        write_rows(arr, str(tmp_path / "g"), k, x[4 * k : 4 * k + 4], durable=True, enc=None)
    assert np.array_equal(arr[:], x)


def test_object_stores_get_whole_objects_through_the_store_api():
    store = zarr.storage.MemoryStore()
    g = zarr.open_group(store, mode="w")
    arr = row_array(g, "x", (8, 3), 2, 4, "float32", ("row", "d"), parse_codec("zstd:1"))
    x = np.random.default_rng(1).standard_normal((8, 3)).astype(np.float32)
    enc = encoder_for(arr)
    for k in range(2):
        write_rows(arr, "", k, x[4 * k : 4 * k + 4], durable=True, enc=enc)
    assert np.array_equal(arr[:], x)


def test_a_failed_write_leaves_no_object_and_no_temporary(tmp_path, monkeypatch):
    import actstore.capture.shardio as shardio

    g = zarr.open_group(str(tmp_path / "g"), mode="w")
    arr = row_array(g, "x", (8, 3), 2, 4, "float32", ("row", "d"), None)

    def eio(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(shardio.os, "fsync", eio)
    with pytest.raises(OSError, match="Input/output error"):
        write_rows(
            arr,
            str(tmp_path / "g"),
            0,
            np.ones((4, 3), np.float32),
            durable=True,
            enc=encoder_for(arr),
        )
    left = [f for _, _, fs in os.walk(tmp_path / "g" / "x") for f in fs if f != "zarr.json"]
    assert left == []


def test_pcodec_stores_round_trip_exactly_through_zarr(tmp_path, tiny_model):
    pytest.importorskip("pcodec")
    import actstore

    opts = dict(
        model=tiny_model,
        dataset=["The quick brown fox jumps over the lazy dog. " * 20] * 4,
        sites="resid_post:1,z:2",
        seq_len=16,
        n_rows=12,
        batch_size=4,
        rows_per_chunk=2,
        rows_per_shard=4,
        progress=False,
        storage_dtype="float16",
    )
    plain = actstore.cache(out=str(tmp_path / "plain.zarr"), **opts)
    packed = actstore.cache(out=str(tmp_path / "pcodec.zarr"), codec="pcodec", **opts)
    assert encoder_for(packed["blocks.1.hook_resid_post"]) is None  # written by zarr
    for hook in plain.sites:
        a, b = plain.acts(hook), packed.acts(hook)
        assert b.dtype == np.float16 and np.array_equal(a.view(np.uint16), b.view(np.uint16))
