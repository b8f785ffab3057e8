"""Multi-process scaling: the same `actstore cache` command run by one process and by
N processes under torchrun, side by side (interleaved), on the same machine.

Each configuration gets the same cores in total: one process with T torch threads,
or N processes with T/N threads each (torchrun's OMP_NUM_THREADS). Reported: wall
time of the whole command (process start, model load and store creation included)
and the scaling ratio t(1) / t(N). The stores are checked to be byte-identical
(apart from the root zarr.json, which records the command line and time).
No assertions on timings: information only.

    python benchmarks/bench_parallel.py                          # 1 vs 2 CPU processes, GPT-2-small shape
    python benchmarks/bench_parallel.py --procs 1,2,4,8 --device cuda --n-rows 4096   # one process per GPU
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers.utils import logging as hf_logging

from actstore.demo import build_random_gpt2


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", default="1,2", help="comma-separated process counts")
    p.add_argument("--n-layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-heads", type=int, default=12)
    p.add_argument("--sites", default="resid_post:all")
    p.add_argument("--n-rows", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--rows-per-shard", type=int, default=16, help="small shards, so every process gets several"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 2,
        help="CPU threads in total per configuration",
    )
    p.add_argument("--repeat", type=int, default=2)
    return p.parse_args()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(a: argparse.Namespace, model: Path, out: Path, n: int) -> float:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(n),
        "--master-port",
        str(_port()),
        "-m",
        "actstore",
        "cache",
        str(out),
        "--model",
        str(model),
        "--dataset",
        "actstore-demo",
        "--sites",
        a.sites,
        "--n-rows",
        str(a.n_rows),
        "--seq-len",
        str(a.seq_len),
        "--batch-size",
        str(a.batch_size),
        "--rows-per-chunk",
        str(a.batch_size),
        "--rows-per-shard",
        str(a.rows_per_shard),
        "--device",
        a.device,
        "--quiet",
        "--no-disk-check",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(max(1, a.threads // n))}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{n} processes failed:\n{r.stderr[-3000:]}")
    return dt


def files(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and str(p.relative_to(path)) != "zarr.json"
    }


def main() -> None:
    a = parse_args()
    hf_logging.disable_progress_bar()
    procs = [int(x) for x in a.procs.split(",")]
    tokens = a.n_rows * a.seq_len
    print(
        f"bench_parallel: {a.n_rows} rows x {a.seq_len} tokens, sites {a.sites!r}, {a.n_layers} layers d_model "
        f"{a.d_model}, {a.device}, {a.threads} threads in total, shards of {a.rows_per_shard} rows, best of {a.repeat}"
    )
    with tempfile.TemporaryDirectory(prefix="bench_parallel_") as tmp_s:
        tmp = Path(tmp_s)
        model = build_random_gpt2(
            tmp / "model",
            n_layer=a.n_layers,
            n_embd=a.d_model,
            n_head=a.n_heads,
            n_positions=max(1024, a.seq_len),
        )
        times: dict[int, list[float]] = {n: [] for n in procs}
        first: dict[str, bytes] | None = None
        for r in range(a.repeat):
            for n in procs:
                out = tmp / f"s{n}-{r}.zarr"
                times[n].append(run(a, model, out, n))
                got = files(out)
                if first is None:
                    first = got
                elif got != first:
                    raise SystemExit(f"the store of {n} processes differs from the first one")
                subprocess.run(["rm", "-rf", str(out)], check=True)
    base = min(times[procs[0]])
    print(f"  {'processes':>10}{'seconds':>10}{'tokens/s':>12}{'scaling':>10}")
    for n in procs:
        t = min(times[n])
        print(f"  {n:>10}{t:>10.1f}{tokens / t:>12,.0f}{base / t:>9.2f}x")
    print(
        "  (every store byte-identical; times include process start, model load and store creation)"
    )


if __name__ == "__main__":
    main()
