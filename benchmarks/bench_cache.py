"""Caching throughput, side by side in one run, on the same token rows:

  bare     the same truncated forward actstore runs (abandoned after the last needed
           hook, LoadedModel.capture(keep=False)), same batch size       -> tokens/s
  hf       the plain Hugging Face model (GPT2LMHeadModel.from_pretrained of the same
           folder, no TransformerLens), the same blocks (stopped by a forward hook
           on the last one needed), eager and sdpa attention            -> tokens/s
           (what the hardware does without the bridge: issue 16 item 6's reference)
  actstore actstore.cache() into a fresh store (durable: fsynced)         -> tokens/s, MB/s
  naive    the loop users write today: run_with_cache on each batch, then write
           each site's batch synchronously into a Zarr array (chunk = batch, no
           compression, like actstore's default)                         -> tokens/s
  raw      numpy writing the same bytes sequentially to the same disk, with fsync
  writer   actstore's shard writer alone, fed the same shards from memory -> MB/s
           (and without the per-shard statistics, its main CPU cost)

actstore's throughput is marginal: (rows of a full run - rows of a quarter run) over
the difference of their times, so that model load, shape probe, corpus count and
store creation (fixed costs, reported apart) cancel. Scenarios:

  --scenario compute  GPT-2-small shape, resid_post at all 12 layers (issue 3 (a))
  --scenario io       2 layers, d_model 768: every resid, attn_out, mlp_out and z (b)
  --scenario layer6   GPT-2-small shape, blocks.6.hook_resid_post only (the forward stops
                      after block 6; issue 16 item 6's measurement)
  --scenario gpt2-xl  GPT-2-XL shape (48 layers, d_model 1600, 25 heads), resid_post of
                      every 4th layer (a GPU's job: scripts/gpu_check.sh)

Ratios: actstore/bare (a); actstore/hf and bare/hf (the bridge's own cost); actstore MB/s / raw and writer MB/s / raw (b); actstore /
naive (c). Best of --repeat, interleaved. No assertions: information only. The
model is a random-init GPT-2-shaped model built into a temp folder (no download).

    python benchmarks/bench_cache.py --scenario compute --repeat 3
    python benchmarks/bench_cache.py --scenario io --repeat 3
    python benchmarks/bench_cache.py --scenario layer6 --n-rows 256 --repeat 3 --skip-naive --breakdown
    python benchmarks/bench_cache.py --scenario compute --device cuda --dtype float16 --n-rows 2048
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from bridge_cost import (  # benchmarks/bridge_cost.py
    ATTN,
    PARTS,
    TINY,
    breakdown,
    hf_forward,
    plain_hf,
    same_values,
    sync,
)
from transformers.utils import logging as hf_logging

import actstore
from actstore.capture.shard_write import Shard, ShardWrite
from actstore.capture.staging import ShardBuffers
from actstore.demo import build_random_gpt2
from actstore.models import LoadedModel, load_model
from actstore.sites import SiteShape, parse_sites, stop_layer
from actstore.store.format import create_store

SCENARIOS = {
    "compute": dict(n_layers=12, d_model=768, n_heads=12, sites="resid_post:all"),
    "layer6": dict(n_layers=12, d_model=768, n_heads=12, sites="resid_post:6"),
    "io": dict(
        n_layers=2,
        d_model=768,
        n_heads=12,
        sites="resid_pre:all,resid_mid:all,resid_post:all,attn_out:all,mlp_out:all,z:all",
    ),
    # GPT-2 XL's shape (1.5B parameters), every 4th layer's residual stream: 38 KB a token in float16
    "gpt2-xl": dict(
        n_layers=48,
        d_model=1600,
        n_heads=25,
        sites="resid_post:" + ",".join(map(str, range(3, 48, 4))),
    ),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=SCENARIOS, default="compute")
    p.add_argument(
        "--dataset",
        default="actstore-demo",
        help="the corpus: actstore-demo (418 rows of 128 GPT-2 tokens), or repeated-random:H (unlimited; "
        "--seq-len 2H+1) for long GPU runs",
    )
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--n-rows", type=int, default=128, help="rows of the full run (a quarter run is also timed)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="compute dtype (default float32 on CPU, float16 on CUDA)",
    )
    p.add_argument("--codec", default="none")
    p.add_argument(
        "--dir", default=None, help="where the stores go (default: a temp dir on /tmp's disk)"
    )
    p.add_argument(
        "--repeat", type=int, default=2, help="timed rounds; the best of each is reported"
    )
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also time each component (layer norms, attention, MLP, the rest) in the bridge and in the "
        "plain Hugging Face model, one batch, median of --repeat",
    )
    p.add_argument("--out-json", default=None)
    return p.parse_args()


def timed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn`` takes, started from a synced disk: no run pays for the writeback of
    another's dirty pages (on a fast disk that moved the write ratios by 0.2 either way)."""
    os.sync()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Bench:
    def __init__(self, a: argparse.Namespace, tmp: Path):
        self.a, self.tmp = a, tmp
        sc = SCENARIOS[a.scenario]
        self.folder = build_random_gpt2(
            tmp / "model",
            n_layer=sc["n_layers"],
            n_embd=sc["d_model"],
            n_head=sc["n_heads"],
            n_positions=max(1024, a.seq_len),
            save_dtype="float16" if a.dtype == "float16" else "float32",
        )
        self.sites_spec = sc["sites"]
        self.runs = iter(range(10**6))

    def cache(self, n_rows: int, **kw: Any) -> actstore.ActivationStore:
        a = self.a
        out = self.tmp / f"store{next(self.runs)}.zarr"
        return actstore.cache(
            out=str(out),
            model=str(self.folder),
            dataset=a.dataset,
            sites=self.sites_spec,
            n_rows=n_rows,
            seq_len=a.seq_len,
            batch_size=a.batch_size,
            device=a.device,
            dtype=a.dtype,
            codec=a.codec,
            progress=False,
            check_disk=False,
            **kw,
        )


def naive_loop(
    model: LoadedModel, tokens: torch.Tensor, hooks: list[str], batch: int, out: Path
) -> None:
    """run_with_cache, then write each site's batch to a Zarr array, one after the other."""
    group = zarr.open_group(str(out), mode="w")
    arrays: dict[str, zarr.Array] = {}
    for i in range(0, len(tokens), batch):
        with torch.inference_mode():
            _, cache = model.bridge.run_with_cache(
                tokens[i : i + batch].to(model.device), names_filter=hooks
            )
        for h in hooks:
            x = (
                cache[h]
                .to(torch.float32 if model.info.dtype == "float32" else torch.float16)
                .cpu()
                .numpy()
            )
            if h not in arrays:
                arrays[h] = group.create_array(
                    h,
                    shape=(len(tokens), *x.shape[1:]),
                    chunks=(batch, *x.shape[1:]),
                    dtype=x.dtype,
                    compressors=None,
                )
            arrays[h][i : i + len(x)] = x
    fsync_tree(out)


def raw_write(arrays: dict[str, np.ndarray], out: Path) -> None:
    out.mkdir()
    for h, x in arrays.items():
        p = out / f"{h}.npy"
        np.save(p, x)
        fd = os.open(p, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def writer_alone(store: actstore.ActivationStore, out: Path, stats: bool = True) -> float:
    """actstore's ShardWrite writing the store's own shards again, into a fresh store;
    ``stats=False`` skips the per-shard statistics (float64 moments, the writer's main
    CPU cost), to show what the rest of the write path reaches."""
    import actstore.capture.shard_write as sw

    real = sw.shard_moments
    if not stats:
        sw.shard_moments = lambda buf, shape, mask: sw.Moments.empty(shape.feature_shape or ())
    meta = store.meta
    shapes = {s.hook: SiteShape(tuple(s.dims[1:]), tuple(s.shape[1:])) for s in meta.sites}
    layout = store.layout
    create_store(str(out), meta, layout, shapes, meta.storage_dtype, meta.codec, False)
    group = zarr.open_group(str(out), mode="r+")
    bufs = ShardBuffers(shapes, meta.storage_dtype, layout.rows_per_shard, "cpu")
    write = ShardWrite(
        group,
        str(out),
        layout,
        shapes,
        durable=True,
        clear_first=False,
        threads=min(8, max(2, os.cpu_count() or 2)),
        release=lambda b: None,
    )
    from actstore.corpus import RowBlock

    shards = []
    for k in range(layout.n_shards):
        a, b = layout.shard_rows(k)
        shards.append(
            (
                k,
                RowBlock(
                    a, store.tokens(slice(a, b)), store.doc(slice(a, b)), store.doc_pos(slice(a, b))
                ),
                b - a,
            )
        )
    for h, t in bufs.tensors.items():  # the same activation bytes
        src = store.acts(h, rows=slice(0, min(layout.rows_per_shard, layout.n_rows)))
        t[: len(src)] = torch.from_numpy(np.ascontiguousarray(src))
    os.sync()  # as timed()
    t0 = time.perf_counter()
    try:
        for k, rows, n in shards:
            write(Shard(k, rows, bufs, n))
    finally:
        write.close()
        sw.shard_moments = real
    return time.perf_counter() - t0


def main() -> None:
    a = parse_args()
    a.dtype = a.dtype or ("float32" if a.device == "cpu" else "float16")
    hf_logging.disable_progress_bar()
    quarter = max(a.batch_size, a.n_rows // 4)
    print(
        f"bench_cache --scenario {a.scenario}: {SCENARIOS[a.scenario]['sites']!r}, {a.device} {a.dtype}, "
        f"{a.n_rows} rows x {a.seq_len} tokens (and {quarter} for the marginal rate), batch {a.batch_size}, "
        f"codec {a.codec!r}, torch threads {torch.get_num_threads()}, best of {a.repeat}"
    )
    with tempfile.TemporaryDirectory(prefix="bench_cache_", dir=a.dir) as tmp_s:
        tmp = Path(tmp_s)
        b = Bench(a, tmp)
        first = b.cache(a.n_rows)  # warm-up; supplies the rows and the bytes
        tokens = torch.from_numpy(first.tokens(slice(0, a.n_rows))).long()
        store_bytes = dir_bytes(Path(first.path))
        act_bytes = sum(first[h].nbytes for h in first.sites)
        model = load_model(str(b.folder), a.dtype, a.device)
        sites = parse_sites(
            b.sites_spec, model.bridge.hook_dict.keys(), model.info.n_layers, model.info.n_heads
        )
        hooks = [s.hook for s in sites]
        acts = {h: np.asarray(first.acts(h)) for h in hooks}

        def bare() -> None:
            for i in range(0, a.n_rows, a.batch_size):
                model.capture(tokens[i : i + a.batch_size], sites, keep=False)
            sync(a.device)

        stop = stop_layer(sites)
        hfs = {attn: plain_hf(b.folder, a.dtype, a.device, attn) for attn in ATTN}

        def hf_bare(attn: str) -> None:
            for i in range(0, a.n_rows, a.batch_size):
                hf_forward(hfs[attn], tokens[i : i + a.batch_size].to(a.device), stop)
            sync(a.device)

        bare()
        for attn in ATTN:
            hf_bare(attn)
        t: dict[str, list[float]] = {
            k: []
            for k in (
                "bare",
                *(f"hf_{x}" for x in ATTN),
                "full",
                "quarter",
                "full_hf",
                "quarter_hf",
                "naive",
                "raw",
                "writer",
                "writer_nostats",
                "load",
            )
        }
        for r in range(a.repeat):
            t["bare"].append(timed(bare))
            for attn in ATTN:
                t[f"hf_{attn}"].append(timed(lambda: hf_bare(attn)))
            t["full"].append(timed(lambda: b.cache(a.n_rows)))
            t["quarter"].append(timed(lambda: b.cache(quarter)))
            t["full_hf"].append(timed(lambda: b.cache(a.n_rows, engine="hf")))
            t["quarter_hf"].append(timed(lambda: b.cache(quarter, engine="hf")))
            if not a.skip_naive:
                t["naive"].append(
                    timed(lambda: naive_loop(model, tokens, hooks, a.batch_size, tmp / f"naive{r}"))
                )
            t["raw"].append(timed(lambda: raw_write(acts, tmp / f"raw{r}")))
            t["writer"].append(writer_alone(first, tmp / f"writer{r}.zarr"))
            t["writer_nostats"].append(
                writer_alone(first, tmp / f"writer_nostats{r}.zarr", stats=False)
            )
            t["load"].append(timed(lambda: load_model(str(b.folder), a.dtype, a.device)))
            for p in tmp.iterdir():  # keep the disk use to one round
                if p.name != "model" and p != Path(first.path):
                    shutil.rmtree(p)
        parts = (
            breakdown(
                model, hfs["eager"], tokens[: a.batch_size], sites, a.device, max(3, a.repeat)
            )
            if a.breakdown
            else None
        )
        n_blocks = model.info.n_layers if stop is None else stop
        values = {x: same_values(model, hfs[x], tokens[: a.batch_size], n_blocks) for x in ATTN}
    best = {k: min(v) for k, v in t.items() if v}
    tok = a.n_rows * a.seq_len
    marginal = max(best["full"] - best["quarter"], 1e-9) / (a.n_rows - quarter)  # s per row
    res: dict[str, Any] = {
        "config": vars(a),
        "platform": platform.platform(),
        "tokens": tok,
        "act_mb": act_bytes / 1e6,
        "store_mb": store_bytes / 1e6,
        "times_s": t,
        "bare_tok_s": tok / best["bare"],
        **{f"hf_{x}_tok_s": tok / best[f"hf_{x}"] for x in ATTN},
        "actstore_tok_s": a.seq_len / marginal,
        "actstore_end_to_end_tok_s": tok / best["full"],
        "actstore_hf_tok_s": a.seq_len
        * (a.n_rows - quarter)
        / max(best["full_hf"] - best["quarter_hf"], 1e-9),
        "actstore_mb_s": act_bytes / a.n_rows / marginal / 1e6,
        "fixed_costs_s": best["full"] - marginal * a.n_rows,
        "raw_write_mb_s": act_bytes / best["raw"] / 1e6,
        "writer_alone_mb_s": act_bytes / best["writer"] / 1e6,
        "writer_alone_no_stats_mb_s": act_bytes / best["writer_nostats"] / 1e6,
    }
    if "naive" in best:
        res["naive_tok_s"] = tok / best["naive"]
    res["ratio_a_actstore_over_bare"] = res["actstore_tok_s"] / res["bare_tok_s"]
    for x in ATTN:
        res[f"ratio_actstore_over_hf_{x}"] = res["actstore_tok_s"] / res[f"hf_{x}_tok_s"]
        res[f"ratio_bare_over_hf_{x}"] = res["bare_tok_s"] / res[f"hf_{x}_tok_s"]
    if parts is not None:
        res["breakdown_s"] = parts
    res["plain_hf_vs_bridge_values"] = values
    res["ratio_b_actstore_over_raw"] = res["actstore_mb_s"] / res["raw_write_mb_s"]
    res["ratio_b_writer_over_raw"] = res["writer_alone_mb_s"] / res["raw_write_mb_s"]
    res["ratio_b_writer_no_stats_over_raw"] = (
        res["writer_alone_no_stats_mb_s"] / res["raw_write_mb_s"]
    )
    if "naive" in best:
        res["ratio_c_actstore_over_naive"] = res["actstore_tok_s"] / res["naive_tok_s"]
        res["ratio_c_end_to_end_over_naive"] = res["actstore_end_to_end_tok_s"] / res["naive_tok_s"]

    print(
        f"  activations {act_bytes / 1e6:.1f} MB per {a.n_rows}-row run ({act_bytes / tok / 1e3:.1f} KB/token); "
        f"fixed costs of a cache() call {res['fixed_costs_s']:.2f} s (load {best['load']:.2f} s)"
    )
    print(f"  {'':<40}{'tokens/s':>12}{'MB/s':>10}")
    rows = [
        ("bare forward (TransformerBridge)", res["bare_tok_s"], None),
        *((f"bare Hugging Face forward, {x} attention", res[f"hf_{x}_tok_s"], None) for x in ATTN),
        ("actstore.cache (marginal)", res["actstore_tok_s"], res["actstore_mb_s"]),
        ("actstore.cache (end to end)", res["actstore_end_to_end_tok_s"], None),
        ("actstore.cache --engine hf (marginal)", res["actstore_hf_tok_s"], None),
        ("naive run_with_cache + write loop", res.get("naive_tok_s"), None),
        ("raw numpy write + fsync", None, res["raw_write_mb_s"]),
        ("actstore shard writer alone", None, res["writer_alone_mb_s"]),
        ("  the same without statistics", None, res["writer_alone_no_stats_mb_s"]),
    ]
    for name, tps, mbs in rows:
        print(
            f"  {name:<40}{'' if tps is None else f'{tps:,.0f}':>12}{'' if mbs is None else f'{mbs:,.0f}':>10}"
        )
    print(f"  (a) actstore / bare forward:            {res['ratio_a_actstore_over_bare']:.2f}")
    for x in ATTN:
        print(
            f"      actstore / bare HF forward ({x}):{'':<{6 - len(x)}}{res[f'ratio_actstore_over_hf_{x}']:.2f}   "
            f"bare bridge / bare HF ({x}): {res[f'ratio_bare_over_hf_{x}']:.2f}   (goal: actstore >= 0.95 of HF)"
        )
    print(
        f"  --engine hf / bare HF forward (sdpa, its attention): {res['actstore_hf_tok_s'] / res['hf_sdpa_tok_s']:.2f}"
        f"   (goal >= 0.95); --engine hf / the bridge engine: {res['actstore_hf_tok_s'] / res['actstore_tok_s']:.2f}x"
    )
    for x in ATTN:
        print(
            f"  plain HF ({x}) block outputs vs the bridge's, one batch: bit-equal at "
            f"{sum(r['bit_equal'] for r in values[x])} of {len(values[x])} layers; largest |difference| / spread "
            f"{max(r['max_abs_diff'] / r['spread'] for r in values[x]):.1e}"
        )
    if parts is not None:
        print(
            f"  one batch of {a.batch_size} rows, seconds (median of {max(3, a.repeat)}):  "
            f"{'bridge':>8}{'HF eager':>10}{'extra':>8}"
        )
        for role in (*PARTS, "the rest", "total", TINY):
            br, hf = parts["bridge"][role], parts["hf_eager"][role]
            print(f"    {role:<44}{br:>8.3f}{hf:>10.3f}{br - hf:>+8.3f}")
    print(
        f"  (b) actstore MB/s / raw write:          {res['ratio_b_actstore_over_raw']:.2f}   "
        f"writer alone / raw write: {res['ratio_b_writer_over_raw']:.2f} "
        f"({res['ratio_b_writer_no_stats_over_raw']:.2f} without statistics)"
    )
    if "naive" in best:
        print(
            f"  (c) actstore / naive loop:              {res['ratio_c_actstore_over_naive']:.2f}x marginal, "
            f"{res['ratio_c_end_to_end_over_naive']:.2f}x end to end"
        )
    spread = {k: max(v) / min(v) for k, v in t.items() if v}
    print(
        "  spread (max/min) of timed rounds: "
        + ", ".join(f"{k} {s:.2f}" for k, s in spread.items())
    )
    if a.out_json:
        Path(a.out_json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
