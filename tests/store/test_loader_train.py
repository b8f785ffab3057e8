"""scripts/train_sae.py trains a top-k SAE from the loader: the loss falls, on one
process and under torchrun with two CPU processes (gloo, DDP), and a run stopped at a
checkpoint resumes to the same weights as an uninterrupted one, but not under another
number of processes."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import actstore

from .conftest import DEMO

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "scripts" / "train_sae.py")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "s.zarr"
    actstore.cache(
        out=str(out),
        sites="resid_post:1",
        seq_len=32,
        n_rows=64,
        batch_size=8,
        rows_per_chunk=4,
        rows_per_shard=8,
        **DEMO,
    )
    return str(out)


def launch(store, *args, procs=1):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    runner = (
        [sys.executable]
        if procs == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(procs),
            "--master_port",
            "29517",
        ]
    )
    cmd = [
        *runner,
        SCRIPT,
        store,
        "--site",
        "resid_post:1",
        "--device",
        "cpu",
        "--batch-size",
        "128",
        "--k",
        "8",
        "--expansion",
        "4",
        "--log-every",
        "1",
        "--lr",
        "3e-3",
        *args,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def train(store, *args, procs=1):
    r = launch(store, *args, procs=procs)
    assert r.returncode == 0, f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def falls(log):
    first, last = log[0]["fvu"], sum(x["fvu"] for x in log[-5:]) / 5
    assert 0.3 < first and last < 0.6 * first, (first, last)


@pytest.fixture(scope="module")
def whole(store, tmp_path_factory):
    """20 uninterrupted steps on one process (they cross into the second epoch)."""
    out = tmp_path_factory.mktemp("whole") / "sae.pt"
    return train(store, "--steps", "20", "--out", str(out)), out


def test_loss_falls_on_one_process(whole):
    log, out = whole
    assert [x["step"] for x in log] == list(range(1, 21)) and log[-1][
        "epoch"
    ] >= 1  # crossed an epoch
    falls(log)
    saved = torch.load(out)
    assert saved["hook"] == "blocks.1.hook_resid_post" and saved["sae"]["W_enc"].shape == (128, 512)


def test_loss_falls_under_torchrun_two_processes(store):
    falls(train(store, "--steps", "20", procs=2))


@pytest.fixture(scope="module")
def partial(store, tmp_path_factory):
    """A checkpoint of the first 13 of the 20 steps."""
    ckpt = tmp_path_factory.mktemp("partial") / "ckpt.pt"
    train(store, "--steps", "13", "--checkpoint", str(ckpt), "--save-every", "13")
    return ckpt


def test_checkpoint_resumes_exactly(store, whole, partial, tmp_path):
    ckpt, part = tmp_path / "ckpt.pt", tmp_path / "part.pt"
    ckpt.write_bytes(partial.read_bytes())
    log = train(store, "--steps", "20", "--checkpoint", str(ckpt), "--out", str(part))
    assert log[0]["step"] == 14
    a, b = torch.load(whole[1])["sae"], torch.load(part)["sae"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_under_another_number_of_processes_is_refused(store, partial):
    before = hashlib.sha256(partial.read_bytes()).hexdigest()
    r = launch(store, "--steps", "20", "--checkpoint", str(partial), procs=2)
    # no traceback of ours
    assert r.returncode != 0 and f'File "{SCRIPT}"' not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("train_sae: error: ")]
    # the same line, from each process
    assert 1 <= len(errors) <= 2 and len(set(errors)) == 1, r.stderr[-3000:]
    assert "made by 1 process; this run has 2: run as many" in errors[0]
    assert hashlib.sha256(partial.read_bytes()).hexdigest() == before
