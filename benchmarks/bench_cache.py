"""Caching throughput against the bare forward it wraps.

Measures, in one run and on the same token rows:
  (a) bare forward: the same truncated forward actstore runs (abandoned right after the
      last needed hook; LoadedModel.capture(keep=False) keeps nothing), same batch size,
      under torch.inference_mode  -> tokens/s
  (b) actstore.cache() of the same rows into a fresh store in a temp dir  -> tokens/s,
      end to end (whole call: model load, shape probe, corpus count, store creation,
      forward + capture + write, stats) and with the separately timed load_model()
      subtracted ("excluding load")
  (c) the ratio caching / bare forward.
The model is a random-init GPT-2-shaped model built into a temp folder (no download).
Each figure is the best of --repeat runs, after --warmup untimed runs of each. No assertions
on timings: the figures are information only.

    /tmp/venv/bin/python benchmarks/bench_cache.py                      # GPT-2-small shape, defaults
    /tmp/venv/bin/python benchmarks/bench_cache.py --n-layers 2 --d-model 256 --n-heads 4 --n-rows 32
    /tmp/venv/bin/python benchmarks/bench_cache.py --repeat 3 --out-json /tmp/bench_cache.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers.utils import logging as hf_logging

import actstore
from actstore.demo import build_random_gpt2
from actstore.models import LoadedModel, load_model
from actstore.sites import Site, parse_sites, stop_layer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-heads", type=int, default=12)
    p.add_argument("--n-positions", type=int, default=1024)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-rows", type=int, default=64)
    p.add_argument("--sites", default="resid_post:all")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--codec", default="none", help="activations' codec passed to actstore.cache")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs of each before timing")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--repeat", type=int, default=1, help="timed runs of each; the best is reported")
    p.add_argument("--out-json", default=None, help="also write the results to this JSON file")
    return p.parse_args()


def best_of(n: int, fn: Callable[[], object]) -> float:
    times: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bare_forward(model: LoadedModel, tokens: torch.Tensor, sites: list[Site], batch_size: int) -> None:
    for i in range(0, len(tokens), batch_size):
        model.capture(tokens[i:i + batch_size], sites, keep=False)
    if model.device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    a = parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    tokens_total = a.n_rows * a.seq_len
    print("bench_cache: actstore.cache() vs the bare TransformerBridge forward on the same rows")
    print(f"  model: random-init GPT-2 shape, {a.n_layers} layers, d_model {a.d_model}, {a.n_heads} heads; "
          f"{a.device} {a.dtype}; torch threads {torch.get_num_threads()}")
    print(f"  run: {a.n_rows} rows x {a.seq_len} tokens = {tokens_total:,} tokens, batch {a.batch_size}, "
          f"sites {a.sites!r}, codec {a.codec!r}, best of {a.repeat} after {a.warmup} warm-up")

    hf_logging.disable_progress_bar()  # save_pretrained's bar
    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        folder = build_random_gpt2(Path(tmp) / "model", n_layer=a.n_layers, n_embd=a.d_model,
                                   n_head=a.n_heads, n_positions=a.n_positions)
        runs = iter(range(10**6))

        def run_cache() -> actstore.ActivationStore:
            out = Path(tmp) / f"store{next(runs)}.zarr"
            return actstore.cache(out=str(out), model=str(folder),
                                  dataset="actstore-demo", sites=a.sites, n_rows=a.n_rows, seq_len=a.seq_len,
                                  batch_size=a.batch_size, device=a.device, dtype=a.dtype, codec=a.codec,
                                  progress=False, check_disk=False)

        # warm-up (first runs in a process are slow: allocator, thread pool, fresh memory pages);
        # the first caching run's store supplies the exact rows for the bare forward
        store = run_cache()
        tokens = torch.from_numpy(store.tokens(slice(0, a.n_rows))).long()
        store_mb = sum(f.stat().st_size for f in Path(store.path).rglob("*") if f.is_file()) / 1e6
        shutil.rmtree(store.path)
        model = load_model(str(folder), a.dtype, a.device)
        sites = parse_sites(a.sites, model.bridge.hook_dict.keys(), model.info.n_layers, model.info.n_heads)
        stop = stop_layer(sites)
        for w in range(a.warmup):
            bare_forward(model, tokens, sites, a.batch_size)
            if w:
                shutil.rmtree(run_cache().path)

        load_times: list[float] = []
        bare_times: list[float] = []
        cache_times: list[float] = []
        stores: list[actstore.ActivationStore] = []
        for _ in range(a.repeat):  # interleaved, so drift hits each alike
            bare_times.append(best_of(1, lambda: bare_forward(model, tokens, sites, a.batch_size)))
            cache_times.append(best_of(1, lambda: stores.append(run_cache())))
            shutil.rmtree(stores.pop().path)
            load_times.append(best_of(1, lambda: load_model(str(folder), a.dtype, a.device)))
        bare_s, cache_s, load_s = min(bare_times), min(cache_times), min(load_times)

    steady_s = max(cache_s - load_s, 1e-9)
    res: dict[str, Any] = {
        "config": vars(a), "stop_layer": stop, "n_sites": len(sites), "tokens": tokens_total,
        "store_mb": round(store_mb, 1), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "bare_forward_s": bare_s, "cache_end_to_end_s": cache_s, "load_model_s": load_s,
        "cache_excluding_load_s": steady_s,
        "bare_forward_tok_s": tokens_total / bare_s, "cache_end_to_end_tok_s": tokens_total / cache_s,
        "cache_excluding_load_tok_s": tokens_total / steady_s,
        "ratio_end_to_end": bare_s / cache_s, "ratio_excluding_load": bare_s / steady_s,
        "all_times_s": {"bare": bare_times, "cache": cache_times, "load": load_times},
    }
    print(f"  {len(sites)} sites, stop_at_layer={stop}, store {store_mb:.1f} MB on disk")
    print()
    print(f"  {'measurement':<34}{'seconds':>10}{'tokens/s':>12}{'vs bare':>10}{'max/min':>10}")
    rows = [("bare forward (same stop, no capture)", bare_s, 1.0, bare_times),
            ("actstore.cache, end to end", cache_s, res["ratio_end_to_end"], cache_times),
            ("actstore.cache, excluding load", steady_s, res["ratio_excluding_load"], None)]
    for name, s, ratio, ts in rows:
        spread = f"{max(ts) / min(ts):>9.2f}x" if ts else f"{'':>10}"
        print(f"  {name:<34}{s:>10.2f}{tokens_total / s:>12,.0f}{ratio:>9.2f}x{spread}")
    print(f"  {'load_model alone':<34}{load_s:>10.2f}{'':>22}{max(load_times) / load_s:>9.2f}x")
    print("  (max/min: spread of the timed runs; a large one means a noisy machine, so rerun with more --repeat)")
    print()
    print(f"  caching throughput / bare forward: {res['ratio_end_to_end']:.2f} end to end, "
          f"{res['ratio_excluding_load']:.2f} excluding model load")
    if a.out_json:
        Path(a.out_json).write_text(json.dumps(res, indent=2))
        print(f"  results written to {a.out_json}")


if __name__ == "__main__":
    main()
