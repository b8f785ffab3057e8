"""actstore against nnsight's plain loop (benchmarks/peers/nnsight_loop.py), side by side:
whole processes, start-up included on both sides, alternating rounds, the same rows of a
GPT-2-small-shape model (12 layers, d_model 768), every block's output (12 `resid_post`
sites) in float32, written uncompressed and fsynced.

    python benchmarks/bench_nnsight.py --peer-python /tmp/nns-venv/bin/python --rows 64 --rounds 3

Prints each round's seconds, the medians and their ratios (actstore --engine hf, actstore
with the default bridge engine, nnsight), and how far the peer's values are from actstore's
relative to their spread (they are the same plain model's: float rounding only).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--peer-python",
        default=None,
        help="the python of a venv with nnsight (see the peer's docstring); without it only actstore runs",
    )
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n-layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-heads", type=int, default=12)
    a = p.parse_args()
    from actstore.demo import build_random_gpt2

    tmp = Path(tempfile.mkdtemp(prefix="bench_nnsight"))
    try:
        model = build_random_gpt2(
            tmp / "model", n_layer=a.n_layers, n_embd=a.d_model, n_head=a.n_heads, n_positions=1024
        )
        base = [
            sys.executable,
            "-m",
            "actstore",
            "cache",
            "",
            "--model",
            str(model),
            "--dataset",
            "actstore-demo",
            "--sites",
            "resid_post:all",
            "--n-rows",
            str(a.rows),
            "--seq-len",
            str(a.seq_len),
            "--batch-size",
            str(a.batch),
            "--rows-per-chunk",
            str(a.batch),
            "--quiet",
            "--overwrite",
        ]

        def ours(engine: str) -> list[str]:
            cmd = list(base)
            cmd[4] = str(tmp / f"{engine}.zarr")
            return cmd + ["--engine", engine]

        # warm-up, and the rows for the peer
        subprocess.run(ours("hf"), check=True, stdin=subprocess.DEVNULL)
        import actstore

        np.save(tmp / "tokens.npy", actstore.open(str(tmp / "hf.zarr")).tokens())
        peer = [
            a.peer_python,
            str(HERE / "peers" / "nnsight_loop.py"),
            str(model),
            str(tmp / "tokens.npy"),
            str(tmp / "peer.zarr"),
            "--batch",
            str(a.batch),
        ]
        if a.peer_python:
            # warm-up
            subprocess.run(peer, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        t: dict[str, list[float]] = {"hf": [], "bridge": [], "nnsight": []}
        for _ in range(a.rounds):
            t["hf"].append(timed(ours("hf")))
            if a.peer_python:
                t["nnsight"].append(timed(peer))
            t["bridge"].append(timed(ours("bridge")))
        med = {k: statistics.median(v) for k, v in t.items() if v}
        print(
            f"bench_nnsight: {a.rows} rows x {a.seq_len} tokens, batch {a.batch}, {a.n_layers} layers x d_model "
            f"{a.d_model}, {a.n_layers} resid_post sites, float32, {a.rounds} alternating rounds (whole processes, s)"
        )
        for k, v in t.items():
            if v:
                print(f"  {k:<8} " + " ".join(f"{x:6.2f}" for x in v) + f"   median {med[k]:.2f}")
        print(
            f"  speed of actstore --engine hf over actstore (bridge): {med['bridge'] / med['hf']:.2f}x"
        )
        if not a.peer_python:
            print("  nnsight: not measured (pass --peer-python, a venv with nnsight)")
            return
        store, theirs = (
            actstore.open(str(tmp / "hf.zarr")),
            zarr.open_group(str(tmp / "peer.zarr"), mode="r"),
        )
        worst = max(
            float(np.abs(store.acts(h) - theirs[h][...]).max() / np.ptp(store.acts(h)))
            for h in store.sites
        )
        print(
            f"  speed of actstore --engine hf over nnsight: {med['nnsight'] / med['hf']:.2f}x   (goal >= 1.1)"
        )
        print(
            f"  speed of actstore (bridge) over nnsight:    {med['nnsight'] / med['bridge']:.2f}x"
        )
        print(f"  nnsight's values vs --engine hf's: largest |difference| / spread {worst:.1e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
