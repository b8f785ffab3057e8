"""Shuffled training loader against a sequential read of the same bytes.

(a) sequential: ActivationStore.iter_blocks over every row, whole shards in store
    order, one thread (the fastest way to read the store once)
(b) store.loader(..., shuffle=True): random chunk order, threaded reads, tokens
    shuffled a window of chunks at a time, token-level torch batches
(c) the same loader split across --ranks processes (rank=, world_size=, as under
    torchrun): each reads its share; MB/s is the store's bytes over the wall time from
    the common start to the last rank's end
MB/s is the activation bytes read from the store per second (the store's
uncompressed bytes of the chosen sites); the goal is (b) / (a) >= 0.7. Each figure is
the best of --repeat runs after one untimed warm-up read, so both are served from the
page cache alike. Information only: no assertions.

  /tmp/venv/bin/python benchmarks/bench_loader.py                       # 6 x d_model 768 sites, 448 rows x 64
  /tmp/venv/bin/python benchmarks/bench_loader.py --codec zstd:1 --workers 1,2,4
  /tmp/venv/bin/python benchmarks/bench_loader.py --store acts.zarr --sites resid_post:all --ranks 1,2,4
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

import actstore
from actstore.demo import build_random_gpt2
from actstore.store.loader import resolve_sites


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", help="reuse this store (else one is cached into a temp dir)")
    p.add_argument("--sites", default="resid_post:all")
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-rows", type=int, default=448)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--rows-per-chunk", type=int, default=16)
    p.add_argument("--codec", default="none")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--workers", default="4", help="comma-separated worker counts to measure")
    p.add_argument(
        "--ranks", default="1,2", help="comma-separated process counts for the split loader"
    )
    p.add_argument("--repeat", type=int, default=3)
    return p.parse_args()


def best_of(n: int, fn: Callable[[], int]) -> tuple[float, int]:
    times, got = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        got = fn()
        times.append(time.perf_counter() - t0)
    return min(times), got


def rank_run(
    path: str, hooks: list[str], batch_size: int, workers: int, rank: int, world: int, start, out
) -> None:
    """One rank of the split loader, in its own process: wait for every rank, read its share."""
    store = actstore.ActivationStore.open(path)
    loader = store.loader(
        hooks, batch_size, seed=0, num_workers=workers, skip_bos=False, rank=rank, world_size=world
    )
    start.wait()
    t0 = time.perf_counter()
    n = sum(len(batch["row"]) for batch in loader)
    out.put((n, t0, time.perf_counter()))


def ranks_run(
    path: str, hooks: list[str], batch_size: int, workers: int, world: int
) -> tuple[float, int]:
    """(seconds from the common start to the last rank's end, tokens read by all ranks)."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(world), ctx.Queue()
    procs = [
        ctx.Process(target=rank_run, args=(path, hooks, batch_size, workers, r, world, start, out))
        for r in range(world)
    ]
    for proc in procs:
        proc.start()
    got = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
        if proc.exitcode:
            raise SystemExit(f"a rank failed (exit code {proc.exitcode})")
    return max(g[2] for g in got) - min(g[1] for g in got), sum(g[0] for g in got)


def main() -> None:
    a = parse_args()
    hf_logging.disable_progress_bar()  # save_pretrained's bar
    print("bench_loader: store.loader (shuffled) vs a sequential read of the same bytes")
    print(f"  torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.platform()}")
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        if a.store:
            store = actstore.ActivationStore.open(a.store)
        else:
            folder = build_random_gpt2(
                Path(tmp) / "model",
                seed=0,
                n_layer=a.n_layers,
                n_embd=a.d_model,
                n_head=a.d_model // 64,
                n_positions=max(1024, a.seq_len),
            )
            t0 = time.perf_counter()
            store = actstore.cache(
                out=str(Path(tmp) / "s.zarr"),
                model=str(folder),
                dataset="actstore-demo",
                sites=a.sites,
                n_rows=a.n_rows,
                seq_len=a.seq_len,
                rows_per_chunk=a.rows_per_chunk,
                batch_size=a.rows_per_chunk,
                codec=a.codec,
                progress=False,
                check_disk=False,
            )
            print(f"  cached in {time.perf_counter() - t0:.1f}s")
        hooks = resolve_sites(store, a.sites)
        nbytes = sum(store[h].nbytes for h in hooks)
        lay = store.layout
        print(
            f"  store: {store.n_rows} rows x {lay.seq_len}, chunks of {lay.rows_per_chunk} rows, shards of "
            f"{lay.rows_per_shard}, codec {store.metadata['codec']}, {len(hooks)} sites, {nbytes / 1e6:,.0f} MB"
        )

        def sequential() -> int:
            n = 0
            for _, block in store.iter_blocks(hooks):
                n += sum(v.nbytes for v in block.values())
            return n

        def loader(workers: int, skip_bos: bool) -> Callable[[], int]:
            def run() -> int:
                n = 0
                for batch in store.loader(
                    hooks,
                    a.batch_size,
                    shuffle=True,
                    seed=0,
                    num_workers=workers,
                    skip_bos=skip_bos,
                ):
                    n += len(batch["row"])
                return n

            return run

        sequential()  # warm-up: page cache
        seq_s, got = best_of(a.repeat, sequential)
        assert got == nbytes
        print()
        print(f"  {'read':<44}{'seconds':>9}{'MB/s':>9}{'vs sequential':>15}")
        print(
            f"  {'sequential (iter_blocks, whole shards)':<44}{seq_s:>9.2f}{nbytes / seq_s / 1e6:>9.0f}{1.0:>14.2f}x"
        )
        n_tokens = store.n_rows * lay.seq_len
        for workers in [int(w) for w in a.workers.split(",")]:
            for skip_bos in (False, True):
                loader(workers, skip_bos)()
                s, tokens = best_of(a.repeat, loader(workers, skip_bos))
                assert tokens == (n_tokens if not skip_bos else n_tokens - store.n_rows)
                name = f"loader shuffle, {workers} worker{'s' if workers > 1 else ''}" + (
                    ", skip BOS" if skip_bos else ""
                )
                print(f"  {name:<44}{s:>9.2f}{nbytes / s / 1e6:>9.0f}{seq_s / s:>14.2f}x")
        workers = int(a.workers.split(",")[-1])  # the ranks use the last --workers count
        for world in [int(r) for r in a.ranks.split(",")]:
            times = [
                ranks_run(store.path, hooks, a.batch_size, workers, world) for _ in range(a.repeat)
            ]
            assert all(tokens == n_tokens for _, tokens in times)
            s = min(t for t, _ in times)
            name = f"loader, {world} rank{'s' if world > 1 else ''} ({world} process{'es' if world > 1 else ''})"
            print(f"  {name:<44}{s:>9.2f}{nbytes / s / 1e6:>9.0f}{seq_s / s:>14.2f}x")
        print(
            f"  (batches of {a.batch_size} tokens; windows of the default 8 chunks; MB/s counts the store's "
            f"bytes of the sites read; the ranks use {workers} read threads each)"
        )


if __name__ == "__main__":
    main()
