"""Compression ratio, write and read speed of actstore's activation codecs.

Captures two sites (blocks.L.hook_resid_post and blocks.L.attn.hook_z, L the middle
layer) of a model on rows of the bundled demo corpus: the trained demo model (`--model
actstore-demo`, the default; d_model 128) or a random-init GPT-2-small-shaped model
(`--model random-gpt2-small`, built in a temp folder). Stores them as float16 with actstore's chunk/shard shapes (chunks (8, seq, ...), shards
(64, seq, ...)) and, for each codec of actstore's codec registry (store/codecs.py; at
its default level and its sample levels, or the specs given by --codecs), writes a fresh
Zarr v3 array the way actstore writes it (whole shards, fsynced) and reads it back with
zarr. MB/s are of uncompressed bytes; ratio = uncompressed / on disk; each round trip
is checked bit for bit. Best of --repeat runs; no assertions on speed.

    python benchmarks/bench_codecs.py
    python benchmarks/bench_codecs.py --model random-gpt2-small --rows 128 --repeat 5
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import zarr
from transformers.utils import logging as hf_logging

from actstore.capture.shardio import encoder_for, write_rows
from actstore.corpus import CorpusSpec, RowReader
from actstore.demo import build_random_gpt2
from actstore.models import load_model
from actstore.sites import parse_sites
from actstore.store.codecs import registered
from actstore.store.format import parse_codec, row_array

warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")
# every registered codec and its sample levels
CODECS = tuple(spec for c in registered() for spec in c.samples)
# actstore's defaults at batch size 8 (shard capped at 256 MB)
ROWS_PER_CHUNK, ROWS_PER_SHARD = (
    8,
    64,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument(
        "--repeat", type=int, default=3, help="timed runs per codec; the best is reported"
    )
    p.add_argument(
        "--codecs",
        default=",".join(CODECS),
        help="comma-separated codec specs (e.g. zstd:3,pcodec:4)",
    )
    p.add_argument("--model", default="actstore-demo", help="actstore-demo or random-gpt2-small")
    return p.parse_args()


def capture(name: str, rows: int, seq_len: int, tmp: Path) -> dict[str, np.ndarray]:
    if name == "random-gpt2-small":
        name = str(
            build_random_gpt2(tmp / "model", n_layer=12, n_embd=768, n_head=12, n_positions=1024)
        )
    model = load_model(name, "float32", "cpu")
    layer = model.info.n_layers // 2
    sites = parse_sites(
        [f"resid_post:{layer}", f"z:{layer}"],
        model.bridge.hook_dict.keys(),
        model.info.n_layers,
        model.info.n_heads,
    )
    tokens = (
        RowReader(CorpusSpec.from_dataset("actstore-demo", seq_len=seq_len), model.tokenizer)
        .take(rows)
        .tokens
    )
    parts: dict[str, list[np.ndarray]] = {s.hook: [] for s in sites}
    for i in range(0, rows, ROWS_PER_CHUNK):
        got = model.capture(torch.from_numpy(tokens[i : i + ROWS_PER_CHUNK]).long(), sites)
        for hook, t in got.items():
            parts[hook].append(t.to(torch.float16).numpy())
    return {hook: np.concatenate(p) for hook, p in parts.items()}


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "zarr.json")


def layout(shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """actstore's chunks and shards (None: no sharding, as actstore when they coincide)."""
    rpc = min(ROWS_PER_CHUNK, shape[0])
    rps = min(ROWS_PER_SHARD, -(-shape[0] // rpc) * rpc)
    return (rpc,) + shape[1:], ((rps,) + shape[1:] if rps != rpc else None)


def bench(data: np.ndarray, codec: str, root: Path, repeat: int) -> tuple[float, float, float]:
    """(ratio, write MB/s, read MB/s), best of ``repeat``."""
    chunks, shards = layout(data.shape)
    mb = data.nbytes / 1e6
    writes: list[float] = []
    reads: list[float] = []
    stored = 0
    for r in range(repeat):
        path = root / f"{codec.replace(':', '_')}-{r}.zarr"
        group = zarr.open_group(path, mode="w")
        arr = row_array(
            group,
            "a",
            data.shape,
            chunks[0],
            (shards or chunks)[0],
            str(data.dtype),
            ["row"] + [f"d{i}" for i in range(1, data.ndim)],
            parse_codec(codec),
        )
        # None for a codec registered with NO_FAST_PATH (pcodec): zarr writes it
        enc = encoder_for(arr)
        rps = arr.metadata.chunk_grid.chunk_shape[0]
        t0 = time.perf_counter()
        for k in range(-(-len(data) // rps)):
            write_rows(arr, str(path), k, data[k * rps : (k + 1) * rps], durable=True, enc=enc)
        writes.append(time.perf_counter() - t0)
        stored = disk_bytes(path / "a")
        arr = zarr.open_array(path / "a", mode="r")
        t0 = time.perf_counter()
        back = arr[:]
        reads.append(time.perf_counter() - t0)
        if back.dtype != data.dtype or not np.array_equal(
            back.view(np.uint16), data.view(np.uint16)
        ):
            raise SystemExit(f"round trip of codec {codec} is not exact")
    return data.nbytes / stored, mb / min(writes), mb / min(reads)


def main() -> None:
    a = parse_args()
    hf_logging.disable_progress_bar()
    print(
        f"bench_codecs: {a.model}; Zarr v3 float16 activations, actstore layout; MB/s of uncompressed bytes, "
        f"best of {a.repeat}; zarr {zarr.__version__}, torch threads {torch.get_num_threads()}"
    )
    with tempfile.TemporaryDirectory(prefix="bench_codecs_") as tmp:
        acts = capture(a.model, a.rows, a.seq_len, Path(tmp))
        for hook, data in acts.items():
            chunks, shards = layout(data.shape)
            print(
                f"\n  {hook}  shape {data.shape}  {data.nbytes / 1e6:.1f} MB  chunks {chunks} shards {shards}"
            )
            print(f"  {'codec':<26}{'ratio':>7}{'write MB/s':>12}{'read MB/s':>11}  round trip")
            for codec in a.codecs.split(","):
                root = Path(tmp) / "arrays"
                ratio, w, r = bench(data, codec, root, a.repeat)
                print(f"  {codec:<26}{ratio:>7.3f}{w:>12,.0f}{r:>11,.0f}  exact")
                shutil.rmtree(root)  # keep the temp dir small


if __name__ == "__main__":
    main()
