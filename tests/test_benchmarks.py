"""Every benchmark runs (tiny settings): the benchmarks are not timed here (speed is
measured by running them, side by side with their references), but they call the
library's API and must not rot unseen when it changes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    # io: 2 layers of GPT-2-small width (compute, 12 layers, runs the same code at twice the CPU)
    "bench_cache.py": [
        "--scenario",
        "io",
        "--n-rows",
        "16",
        "--batch-size",
        "8",
        "--seq-len",
        "32",
        "--repeat",
        "1",
    ],
    "bench_edges.py": ["--tiny", "--threads", "1", "--pairs", "2", "--sample", "6"],
    "bench_codecs.py": [
        "--rows",
        "16",
        "--seq-len",
        "32",
        "--repeat",
        "1",
        "--codecs",
        "none,zstd",
    ],
    "bench_loader.py": [
        "--n-layers",
        "2",
        "--d-model",
        "64",
        "--n-rows",
        "64",
        "--seq-len",
        "32",
        "--workers",
        "1",
        "--repeat",
        "1",
    ],
    "bench_probes.py": [
        "--n-layers",
        "2",
        "--d-model",
        "64",
        "--n-heads",
        "4",
        "--n-rows",
        "64",
        "--seq-len",
        "32",
    ],
    "bench_eap.py": ["--tiny", "--threads", "1"],
    "bench_attribution.py": [
        "--shapes",
        "tiny",
        "--sweeps",
        "resid_pre",
        "--pairs",
        "2",
        "--repeat",
        "1",
        "--threads",
        "1",
    ],
    "bench_parallel.py": [
        "--procs",
        "1,2",
        "--n-layers",
        "2",
        "--d-model",
        "64",
        "--n-heads",
        "4",
        "--n-rows",
        "32",
        "--seq-len",
        "32",
        "--repeat",
        "1",
    ],
    "bench_patching.py": [
        "--tiny",
        "--direct-path",
        "--threads",
        "1",
        "--batch",
        "1",
        "--sweeps",
        "resid_pre",
        "--scenarios",
        "early",
    ],
    "bench_nnsight.py": [
        "--rows",
        "4",
        "--seq-len",
        "16",
        "--batch",
        "4",
        "--rounds",
        "1",
        "--n-layers",
        "2",
        "--d-model",
        "64",
        "--n-heads",
        "4",
    ],
    "bench_simulate.py": ["--width", "small", "--rows", "16", "--rounds", "1"],
    "bench_saelens.py": [
        "--n-layers",
        "2",
        "--d-model",
        "64",
        "--n-heads",
        "4",
        "--n-rows",
        "8",
        "--seq-len",
        "32",
        "--batch-size",
        "64",
        "--hooks",
        "2",
    ],
}


def test_every_benchmark_is_listed():
    assert sorted(TINY) == sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_runs(script, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *TINY[script]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert r.stdout.strip(), f"{script} printed nothing"
