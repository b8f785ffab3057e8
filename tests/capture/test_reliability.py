"""A store must never be silently wrong: damaged chunks are caught by readers and
by verify, and repaired to the exact bytes; seeded random kills always resume to
an identical store; readers see only finished rows; one writer at a time."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import actstore
from actstore.capture import repair_store
from actstore.capture.lock import lock_path
from actstore.cli import main
from actstore.errors import CorruptChunkError, RowsNotDoneError, StoreLockedError
from actstore.store import verify_store

from ..conftest import DOCS
from ..conftest import RESUME_OPTS as OPTS
from .test_resume import SLOW_DISK, assert_same_store, cli_args


def flip_byte(path, offset=40):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


HOOK = "blocks.1.hook_resid_post"
DAMAGE = {  # what is done to which object -> (array, shard) reported
    "bit flip in activations": (lambda s: flip_byte(s / f"acts/{HOOK}/c/1/0/0"), f"acts/{HOOK}", 1),
    "truncated tokens": (lambda s: truncate(s / "tokens/c/2/0"), "tokens", 2),
    "missing activation shard": (
        lambda s: (s / f"acts/{HOOK}/c/3/0/0").unlink(),
        f"acts/{HOOK}",
        3,
    ),
    "bit flip in stats": (lambda s: flip_byte(s / "stats/partials/c/0/0", 20), "stats/partials", 0),
    "corrupt manifest entry": (lambda s: flip_byte(s / "done/c/2", 0), "done", 2),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damage_is_caught_and_repaired_to_the_exact_bytes(copy, reference, tiny_model, case):
    damage_fn, array, shard = DAMAGE[case]
    damage_fn(copy)
    found = verify_store(str(copy), progress=False)
    assert [(d.array, d.shard) for d in found] == [(array, shard)]
    assert found[0].rows == (shard * 8, min(shard * 8 + 8, 30))
    repair_store(str(copy), found, progress=False)
    assert verify_store(str(copy), progress=False) == []
    assert_same_store(copy, reference)


def test_readers_raise_rather_than_return_garbage(copy):
    flip_byte(copy / f"acts/{HOOK}/c/1/0/0")
    (copy / "acts/blocks.2.hook_resid_post/c/3/0/0").unlink()
    store = actstore.ActivationStore.open(copy)
    assert store.acts(HOOK, rows=slice(0, 8)).shape == (8, 16, 64)  # undamaged shard still reads
    with pytest.raises(
        CorruptChunkError,
        match=rf"acts/{HOOK}' rows 8..15 \(shard 1\).*checksum.*verify .* --repair",
    ):
        store.acts(HOOK, rows=slice(6, 10))
    with pytest.raises(CorruptChunkError, match=r"rows 24..29 \(shard 3\).*object is missing"):
        store.acts("blocks.2.hook_resid_post", rows=29)
    with pytest.raises(CorruptChunkError):
        list(store.iter_blocks([HOOK]))


def test_verify_cli_reports_and_repairs(copy, reference, capsys):
    assert main(["verify", str(copy)]) == 0
    assert "passes its checksum" in capsys.readouterr().out
    truncate(copy / f"acts/{HOOK}/c/0/0/0")
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"acts/{HOOK}: rows 0..7 (shard 0): fails its checksum" in out and "--repair" in out
    assert main(["verify", str(copy), "--repair", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["repaired"] and report["damaged"][0]["rows"] == [0, 8]
    assert_same_store(copy, reference)


@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_seeded_random_times_always_resumes_identically(
    tmp_path, tiny_model, corpus_file, reference, seed
):
    """Wait for a random shard to be done, then kill after a random delay shorter
    than the rest of the run on a slow disk: the kill lands in a forward, a write,
    an fsync or the manifest update of the next shards."""
    rng = random.Random(seed)
    after, delay = rng.choice([0, 1]), rng.uniform(0, 0.15)
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen(
        cli_args(out, tiny_model, corpus_file), env=SLOW_DISK, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (out / "done" / "c" / str(after)).exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed = actstore.ActivationStore.open(out)
    assert proc.returncode == -signal.SIGKILL and (after + 1) * 8 <= killed.rows_done < 30
    actstore.cache(
        out=str(out), model=tiny_model, dataset=corpus_file, resume=True, progress=False, **OPTS
    )
    assert_same_store(out, reference)


def test_reader_during_a_run_sees_only_done_rows(tmp_path, tiny_model, corpus_file, reference):
    out = tmp_path / "live.zarr"
    # the run dies with shards 0 and 1 done, 2 written
    env = {
        **os.environ,
        "ACTSTORE_FAULT": "before_done:2",
    }
    proc = subprocess.Popen(
        cli_args(out, tiny_model, corpus_file), env=env, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not (out / "done" / "c" / "0").exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    store = actstore.ActivationStore.open(out)  # opened while the run writes
    ref = actstore.ActivationStore.open(reference)
    seen = set()
    while proc.poll() is None or not seen:
        done_rows = store.rows_done
        if done_rows:
            assert np.array_equal(
                store.acts(HOOK, rows=slice(0, done_rows)), ref.acts(HOOK, rows=slice(0, done_rows))
            )
            seen.add(done_rows)
        time.sleep(0.01)
    assert proc.returncode == -signal.SIGKILL and store.rows_done == 16
    with pytest.raises(RowsNotDoneError, match="rows not yet written"):
        store.acts(HOOK, rows=slice(10, 20))  # shard 2 is fully written but not done: never shown


def test_second_writer_is_refused_and_stale_lock_taken_over(tmp_path, tiny_model):
    out = tmp_path / "s.zarr"
    lock = lock_path(str(out))
    with open(lock, "w") as f:
        json.dump({"pid": os.getpid(), "host": os.uname().nodename, "started": "now"}, f)
    opts = dict(
        model=tiny_model, dataset=DOCS, sites="resid_post:0", seq_len=16, n_rows=4, progress=False
    )
    with pytest.raises(
        StoreLockedError, match=rf"being written by process {os.getpid()}.*delete the lock file"
    ):
        actstore.cache(out=str(out), **opts)
    assert not out.exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(lock, "w") as f:
        json.dump({"pid": dead.pid, "host": os.uname().nodename, "started": "then"}, f)
    assert actstore.cache(out=str(out), **opts).is_complete
    assert not os.path.exists(lock)
