"""Probes for every layer of a GPT-2-small-shaped store: actstore.probes against
scikit-learn fitting each layer, in the same run, on the same data.

  (a) actstore: fit_probes(store, sites="resid_post:all", ...) — one read of the store,
      the 12 logistic probes trained together (batched L-BFGS), end to end
  (b) scikit-learn: for each layer, read its activations from the store, standardise
      with the store's stats, LogisticRegression(C, tol, max_iter).fit, score
  Both use the same split, classes, standardisation, C, tol and max_iter; the table
  reports both test accuracies per layer. (a) runs before and after (b); the faster is
  reported, with both. The same for ridge (Ridge per layer) on a
  numeric target. Timings are information only: no assertions.

The store is cached first from a random-init GPT-2-small-shaped model (no download),
or reused with --store.

--processes N (default 2; 0 skips) then runs `actstore probe` on the CPU as one process
and under torchrun as N (gloo; the cores shared out by OMP_NUM_THREADS), both as fresh
commands (start-up included), and prints the two times and the largest weight difference.

    /tmp/venv/bin/python benchmarks/bench_probes.py                      # 12 layers, d_model 768, 256 rows x 64
    /tmp/venv/bin/python benchmarks/bench_probes.py --target position --max-classes 0
    /tmp/venv/bin/python benchmarks/bench_probes.py --store /tmp/g2.zarr --device cuda
    /tmp/venv/bin/python benchmarks/bench_probes.py --n-layers 4 --processes 2     # + 1 vs 2 processes
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as hf_logging

import actstore
from actstore.demo import build_random_gpt2
from actstore.probes import Probe, fit_probes
from actstore.probes.labels import parse_target, split_rows


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", help="reuse this store (else one is cached into a temp dir)")
    p.add_argument("--n-layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-heads", type=int, default=12)
    p.add_argument("--n-rows", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--target", default="next_token")
    p.add_argument("--max-classes", type=int, default=64, help="0: every class seen in training")
    p.add_argument("--C", type=float, default=1.0)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument(
        "--ridge-target",
        default="position",
        help="numeric target for the ridge comparison; 'none' skips",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--processes",
        type=int,
        default=2,
        help="also time the CLI on 1 vs this many CPU processes; 0 skips",
    )
    return p.parse_args()


def make_store(a: argparse.Namespace, tmp: str) -> actstore.ActivationStore:
    folder = build_random_gpt2(
        Path(tmp) / "model",
        seed=2,
        n_layer=a.n_layers,
        n_embd=a.d_model,
        n_head=a.n_heads,
        n_positions=max(1024, a.seq_len),
    )
    t0 = time.perf_counter()
    store = actstore.cache(
        out=str(Path(tmp) / "store.zarr"),
        model=str(folder),
        dataset="actstore-demo",
        sites="resid_post:all",
        n_rows=a.n_rows,
        seq_len=a.seq_len,
        progress=False,
        check_disk=False,
    )
    print(f"  cached {a.n_rows} rows x {a.seq_len} tokens in {time.perf_counter() - t0:.1f}s")
    return store


def sklearn_layers(
    store: actstore.ActivationStore,
    hooks: list[str],
    kind: str,
    target: str,
    classes: dict[str, np.ndarray | None],
    a: argparse.Namespace,
) -> tuple[float, dict[str, tuple[float, float]]]:
    """scikit-learn per layer, reading each layer from the store: (seconds, {hook: (train, test)})."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import r2_score

    labels = parse_target(target, store).labels(store, slice(None))
    test_rows = split_rows(store.n_rows, 0.2, 0)
    scores = {}
    t0 = time.perf_counter()
    for hook in hooks:
        x = store.acts(hook)
        m = store.stats(hook)
        x = ((x - m.mean) / np.sqrt(m.var)).astype(np.float32 if kind == "logistic" else np.float64)
        ok = labels >= 0 if classes[hook] is None else np.isin(labels, classes[hook])
        ok[:, 0] = False
        tr, te = ok & ~test_rows[:, None], ok & test_rows[:, None]
        if kind == "logistic":
            with warnings.catch_warnings():
                # ConvergenceWarning at max_iter, as ours reports "not converged"
                warnings.simplefilter("ignore")
                clf = LogisticRegression(C=a.C, tol=a.tol, max_iter=a.max_iter).fit(
                    x[tr], labels[tr]
                )
            scores[hook] = (clf.score(x[tr], labels[tr]), clf.score(x[te], labels[te]))
        else:
            reg = Ridge(alpha=1.0).fit(x[tr], labels[tr].astype(np.float64))
            scores[hook] = (
                r2_score(labels[tr], reg.predict(x[tr])),
                r2_score(labels[te], reg.predict(x[te])),
            )
    return time.perf_counter() - t0, scores


def compare(store: actstore.ActivationStore, kind: str, target: str, a: argparse.Namespace) -> None:
    hooks = store.sites
    opts = (
        dict(max_classes=a.max_classes or None, C=a.C, max_iter=a.max_iter, tol=a.tol)
        if kind == "logistic"
        else {}
    )

    def ours() -> tuple[float, Any]:
        t0 = time.perf_counter()
        rep = fit_probes(
            store,
            sites="resid_post:all",
            target=target,
            kind=kind,
            device=a.device,
            progress=False,
            name=f"bench-{kind}",
            **opts,
        )
        return time.perf_counter() - t0, rep

    # actstore before and after scikit-learn, so that load from elsewhere on the machine hits both alike
    ours_times = [ours()[0]]
    classes = {h: Probe.load(store, h, f"bench-{kind}").classes for h in hooks}
    sk_s, sk = sklearn_layers(store, hooks, kind, target, classes, a)
    t, rep = ours()
    ours_times.append(t)
    ours_s = min(ours_times)
    metric = "acc" if kind == "logistic" else "R^2"
    r0 = next(iter(rep.results.values()))
    print()
    print(
        f"  {kind} probes of '{target}': {len(hooks)} sites, {r0.n_train:,} train / {r0.n_test:,} test tokens"
        + (
            f", {rep.notes['n_classes']} classes, data in {rep.notes['data']} on {rep.notes['device']}"
            if kind == "logistic"
            else ""
        )
    )
    print(
        f"  {'site':<28}{'ours test ' + metric:>15}{'sklearn test ' + metric:>18}{'diff':>9}{'ours iters':>12}"
    )
    diffs = []
    for h, r in rep.results.items():
        diffs.append(abs(r.test - sk[h][1]))
        print(f"  {h:<28}{r.test:>15.4f}{sk[h][1]:>18.4f}{r.test - sk[h][1]:>+9.4f}{r.n_iter:>12}")
    print(f"  max |test {metric} difference|: {max(diffs):.4f}")
    print(
        f"  actstore, all sites in one pass: {ours_s:8.2f}s  (best of the runs before and after scikit-learn: "
        f"{', '.join(f'{t:.2f}s' for t in ours_times)})"
    )
    print(f"  scikit-learn, layer by layer:    {sk_s:8.2f}s")
    print(f"  speed-up (scikit-learn / actstore): {sk_s / ours_s:.2f}x")


def _timed(cmd: list[str], threads: int) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    got = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if got.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{got.stderr[-3000:]}")
    return time.perf_counter() - t0


def processes(
    store: actstore.ActivationStore, kind: str, target: str, a: argparse.Namespace
) -> None:
    """`actstore probe` on the CPU: one process against a.processes under torchrun."""
    n, cores = a.processes, os.cpu_count() or 1
    args = [
        "probe",
        store.path,
        "--sites",
        "resid_post:all",
        "--target",
        target,
        "--kind",
        kind,
        "--device",
        "cpu",
        "--quiet",
        "--plot",
        "none",
        "--json",
    ]
    if kind == "logistic":
        args += ["--C", str(a.C), "--max-iter", str(a.max_iter), "--tol", str(a.tol)]
        args += ["--max-classes", str(a.max_classes)] if a.max_classes else []
    one = _timed([sys.executable, "-m", "actstore", *args, "--name", f"bench-{kind}-1"], cores)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    many = _timed(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(n),
            "--master-port",
            str(port),
            "-m",
            "actstore",
            *args,
            "--name",
            f"bench-{kind}-{n}",
        ],
        max(1, cores // n),
    )
    diff, spread = 0.0, 0.0
    for h in store.sites:
        w1, wn = (
            Probe.load(store, h, f"bench-{kind}-1").weight,
            Probe.load(store, h, f"bench-{kind}-{n}").weight,
        )
        diff, spread = max(diff, float(np.abs(wn - w1).max())), max(spread, float(np.ptp(w1)))
    print(
        f"  {kind}, `actstore probe` on {cores} CPU cores: 1 process {one:.2f}s, {n} processes (torchrun) {many:.2f}s, "
        f"ratio {one / many:.2f}x; max |weight difference| {diff:.2e} (weights' spread {spread:.2f})"
    )


def main() -> None:
    a = parse_args()
    hf_logging.disable_progress_bar()  # save_pretrained's bar
    print("bench_probes: actstore.probes (all layers at once) vs scikit-learn (each layer)")
    print(f"  torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.platform()}")
    with tempfile.TemporaryDirectory(prefix="bench_probes_") as tmp:
        store = actstore.ActivationStore.open(a.store) if a.store else make_store(a, tmp)
        print(
            f"  store {store.path}: {store.n_rows} rows x {store.layout.seq_len}, sites {len(store.sites)}"
        )
        compare(store, "logistic", a.target, a)
        if a.ridge_target != "none":
            compare(store, "ridge", a.ridge_target, a)
        if a.processes:
            print()
            processes(store, "logistic", a.target, a)
            if a.ridge_target != "none":
                processes(store, "ridge", a.ridge_target, a)


if __name__ == "__main__":
    main()
