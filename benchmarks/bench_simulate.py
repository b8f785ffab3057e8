"""The caching pipeline at a GPU's speed, proven on the CPU: a simulated producer stands in
for the model and emits activations of a real shape through the same capture seam
(``LoadedModel.capture(tokens, sites, keep, sink)``), as fast as memory allows or at a set
rate, so what is measured is everything after the forward: staging, statistics, encoding,
writing. Each part runs in its own process (its peak memory is its own), in alternating
rounds:

  producer  the producer alone, its activations staged into the writer's host buffers
  raw       numpy writing the same bytes, one file per site, with fsync
  actstore  actstore.cache with the producer as its model (float16 storage, statistics on)

    python benchmarks/bench_simulate.py --width small --rows 256 --rounds 3   # 12 sites x 768
    python benchmarks/bench_simulate.py --width xl --rows 64 --rounds 3       # 48 sites x 1600
    python benchmarks/bench_simulate.py --width small --rate 400000            # an H100's GPT-2 small
    python benchmarks/bench_simulate.py --width small --rows 256 --s3          # to moto's S3 on loopback

With --s3 the store is an s3:// URL on a local moto server (started here) and the raw write
is fsspec (s3fs) putting the same objects, one per site and shard, with as many threads as
actstore's writer.

The ratio that matters: actstore / min(producer, raw write) (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

SEQ = 129  # rows of repeated-random:64 (cheap synthetic tokens: the producer ignores them)
WIDTHS = {
    "small": dict(n_layers=12, d_model=768, n_heads=12),
    "xl": dict(n_layers=48, d_model=1600, n_heads=25),
}


def sim_model(width: str, rate: float | None) -> Any:
    """A LoadedModel whose capture emits (batch, pos, d_model) float16 for every
    ``blocks.L.hook_resid_post``, from one preallocated tensor, at ``rate`` tokens/s at most."""
    from actstore.model_info import ModelInfo
    from actstore.models import LoadedModel
    from actstore.resources import gpt2_tokenizer

    w = WIDTHS[width]
    hooks = {f"blocks.{layer}.hook_resid_post": None for layer in range(w["n_layers"])}
    info = ModelInfo(
        name=f"simulated-{width}",
        revision=None,
        dtype="float16",
        n_layers=w["n_layers"],
        d_model=w["d_model"],
        n_heads=w["n_heads"],
        d_head=w["d_model"] // w["n_heads"],
        d_mlp=4 * w["d_model"],
        d_vocab=50257,
        n_ctx=1024,
        fingerprint="simulated",
        label="simulated producer",
        in_memory=True,
    )
    source = torch.randn(64, SEQ, w["d_model"]).to(torch.float16)

    class Sim(LoadedModel):
        def capture(
            self,
            tokens: torch.Tensor,
            sites: Sequence[Any],
            keep: bool = True,
            sink: Callable[[str, torch.Tensor], None] | None = None,
        ) -> dict[str, torch.Tensor]:
            t0 = time.perf_counter()
            b, n = tokens.shape
            out = {s.hook: source[:b, :n] for s in sites}
            if sink is not None:
                for hook, x in out.items():
                    sink(hook, x)
            if rate:
                time.sleep(max(0.0, b * n / rate - (time.perf_counter() - t0)))
            return {} if sink is not None or not keep else out

    return Sim(
        bridge=SimpleNamespace(hook_dict=hooks, tokenizer=gpt2_tokenizer()), info=info, device="cpu"
    )


def _moto() -> tuple[Any, dict[str, str]]:
    """A moto S3 server on loopback with a bucket 'bench', and the environment that points at it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    ).create_bucket(Bucket="bench")
    return server, env


def _s3_rm(url: str, env: dict[str, str]) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    )
    prefix = url.removeprefix("s3://bench/")
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix):
        for o in page.get("Contents", []):
            client.delete_object(Bucket="bench", Key=o["Key"])


def part(a: argparse.Namespace) -> dict[str, Any]:
    """One measured part, in this process: seconds and peak RSS."""
    import actstore
    from actstore.capture.staging import ShardBuffers
    from actstore.sites import Site, SiteShape

    model = sim_model(a.width, a.rate)
    w = WIDTHS[a.width]
    sites = [Site(f"blocks.{layer}.hook_resid_post", layer) for layer in range(w["n_layers"])]
    tokens = torch.zeros(a.rows, SEQ, dtype=torch.long)
    out = Path(a.out)
    shard = a.rows_per_shard
    t0 = time.perf_counter()
    if a.part == "producer":
        bufs = ShardBuffers(
            {s.hook: SiteShape(("pos", "d_model"), (SEQ, w["d_model"])) for s in sites},
            "float16",
            a.batch,
            "cpu",
        )
        for i in range(0, a.rows, a.batch):
            model.capture(tokens[i : i + a.batch], sites, sink=lambda h, x: bufs.put(h, 0, x))
    elif a.part == "raw" and a.s3:
        from concurrent.futures import ThreadPoolExecutor

        import s3fs

        # one shard of one site: the object's bytes
        x = model.capture(tokens[:shard], sites)[sites[0].hook]
        data = (
            x.numpy().tobytes()
            if len(x) == shard
            else np.resize(x.numpy(), (shard, *x.shape[1:])).tobytes()
        )
        fs = s3fs.S3FileSystem()
        keys = [f"{a.out}/{s.hook}/{k}" for s in sites for k in range(-(-a.rows // shard))]
        # actstore's writer's default
        threads = a.write_threads or min(8, max(2, os.cpu_count() or 2))
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda key: fs.pipe(key, data), keys))
    elif a.part == "raw":
        x = model.capture(tokens[: a.batch], sites)[sites[0].hook].numpy()
        out.mkdir()
        for s in sites:
            with open(out / f"{s.hook}.bin", "wb") as f:
                for _ in range(0, a.rows, a.batch):
                    f.write(x.data)
                f.flush()
                os.fsync(f.fileno())
    else:
        actstore.cache(
            out=a.out if a.s3 else str(out),
            model=model,
            dataset=f"repeated-random:{SEQ // 2}",
            sites="resid_post:all",
            n_rows=a.rows,
            seq_len=SEQ,
            batch_size=a.batch,
            storage_dtype="float16",
            progress=False,
            check_disk=False,
            write_threads=a.write_threads,
            rows_per_shard=shard,
        )
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--width", choices=WIDTHS, default="small")
    p.add_argument("--rows", type=int, default=256, help=f"rows of {SEQ} tokens")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="the producer's tokens/s (default: as fast as it goes)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--write-threads",
        type=int,
        default=None,
        help="actstore's writer threads (default: its own)",
    )
    p.add_argument(
        "--rows-per-shard",
        type=int,
        default=64,
        help="rows per shard: the object size (default 64)",
    )
    p.add_argument(
        "--s3", action="store_true", help="write to moto's S3 server on loopback, started here"
    )
    p.add_argument(
        "--part", choices=("producer", "raw", "actstore"), default=None, help=argparse.SUPPRESS
    )
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.part:
        print(json.dumps(part(a)))
        return
    w = WIDTHS[a.width]
    n_bytes = a.rows * SEQ * w["n_layers"] * w["d_model"] * 2
    tmp = Path(tempfile.mkdtemp(prefix="bench_simulate"))
    got: dict[str, list[dict[str, Any]]] = {"producer": [], "raw": [], "actstore": []}
    server, env = _moto() if a.s3 else (None, dict(os.environ))
    try:
        for r in range(a.rounds):
            for name in got:
                target = f"s3://bench/r{r}-{name}" if a.s3 else str(tmp / name)
                os.sync()  # no part pays for another's writeback
                cmd = (
                    [
                        sys.executable,
                        __file__,
                        "--part",
                        name,
                        "--out",
                        target,
                        "--width",
                        a.width,
                        "--rows",
                        str(a.rows),
                        "--batch",
                        str(a.batch),
                        "--rows-per-shard",
                        str(a.rows_per_shard),
                    ]
                    + (["--rate", str(a.rate)] if a.rate else [])
                    + (["--s3"] if a.s3 else [])
                    + (["--write-threads", str(a.write_threads)] if a.write_threads else [])
                )
                run = subprocess.run(
                    cmd,
                    check=True,
                    capture_output=True,
                    text=True,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
                got[name].append(json.loads(run.stdout.strip().splitlines()[-1]))
                if a.s3:  # moto keeps objects in memory
                    _s3_rm(target, env)
                else:
                    shutil.rmtree(target, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if server is not None:
            server.stop()
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in got.items()}
    rate = {k: n_bytes / s / 1e6 for k, s in med.items()}
    print(
        f"bench_simulate --width {a.width}: {w['n_layers']} sites x d_model {w['d_model']} float16, {a.rows} rows x {SEQ} "
        f"tokens ({n_bytes / 1e9:.2f} GB), batch {a.batch}, producer "
        f"{'as fast as memory allows' if not a.rate else f'at {a.rate:,.0f} tok/s'}, {os.cpu_count()} cores, "
        f"{'to moto S3 on loopback (raw: s3fs puts), ' if a.s3 else ''}"
        f"medians of {a.rounds} alternating rounds"
    )
    for k in got:
        rss = max(x["peak_rss_mb"] for x in got[k])
        print(
            f"  {k:<9} {med[k]:7.2f} s  {rate[k]:8,.0f} MB/s  {a.rows * SEQ / med[k]:10,.0f} tok/s  peak RSS {rss:,.0f} MB"
        )
    bottleneck = min(rate["producer"], rate["raw"])
    print(
        f"  actstore / min(producer, raw write): {rate['actstore'] / bottleneck:.2f}   (goal >= 0.9)"
    )


if __name__ == "__main__":
    main()
