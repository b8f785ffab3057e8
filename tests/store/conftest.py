"""Stores of the demo model (loads in a second, no fixture model needed): a committed
format-version-1 store, and a run killed half-way through (an unfinished store)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

V1_STORE = Path(__file__).parent / "data" / "v1.zarr"  # written by actstore before format version 2
DEMO = dict(
    model="actstore-demo",
    dataset="actstore-demo",
    dtype="float32",
    storage_dtype="float32",
    device="cpu",
    progress=False,
)


def demo_cli(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "actstore",
        "cache",
        str(out),
        "--model",
        "actstore-demo",
        "--dataset",
        "actstore-demo",
        "--sites",
        "resid_post:0,z:1",
        "--seq-len",
        "16",
        "--n-rows",
        "8",
        "--batch-size",
        "2",
        "--rows-per-chunk",
        "2",
        "--rows-per-shard",
        "2",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


@pytest.fixture
def v1_store(tmp_path: Path) -> Path:
    """A copy of the committed version-1 store (tests may change it)."""
    out = tmp_path / "v1.zarr"
    shutil.copytree(V1_STORE, out)
    return out


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 shards of 2 rows; the run is SIGKILLed with shard 1 written but not marked
    done, so shard 0 is done and shards 2 and 3 were never written."""
    out = tmp_path_factory.mktemp("unfinished") / "s.zarr"
    env = {**os.environ, "ACTSTORE_FAULT": "before_done:1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(demo_cli(out), env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    return out
