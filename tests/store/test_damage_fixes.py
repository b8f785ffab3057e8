"""Damage that verify used to pass, or that gave tracebacks and misleading errors: each
is found, named in one line with its fix, and repaired to the undamaged store's bytes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import actstore
from actstore.cli.main import main
from actstore.errors import RowIndexError, StoreDamagedError, StoreNotFoundError

from ..capture.test_resume import assert_same_store

HOOK = "blocks.1.hook_resid_post"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    got = capsys.readouterr()
    return rc, got.out, got.err


def repaired(capsys: pytest.CaptureFixture[str], copy: Path, reference: Path) -> None:
    rc, out, _ = run(capsys, "verify", str(copy), "--repair", "--device", "cpu")
    assert rc == 0 and "repaired: every problem fixed and verified" in out, out
    assert run(capsys, "verify", str(copy))[0] == 0
    assert_same_store(copy, reference)


@pytest.mark.parametrize("what", ["done/c/1", "stats"])
def test_deleted_manifest_entry_or_stats_fail_verify_and_are_repaired(
    copy, reference, capsys, what
):
    shutil.rmtree(copy / what) if (copy / what).is_dir() else (copy / what).unlink()
    rc, out, _ = run(capsys, "verify", str(copy))
    assert rc == 1
    if what == "stats":
        assert "stats/partials: its metadata (zarr.json) is missing" in out
        assert "stats/partials: rows 8..15 (shard 1): object missing or empty" in out
        with pytest.raises(
            StoreDamagedError, match=r"statistics are missing.*`actstore verify \S+ --repair`"
        ):
            actstore.open(copy).stats(HOOK)  # not "attention patterns have no single position axis"
    else:
        assert "done: rows 8..15 (shard 1): not done" in out
        assert f"the store is incomplete; finish it with `actstore verify {copy} --repair`" in out
        assert (
            "` again with resume=True" in out
            and "incomplete: finish it" in run(capsys, "info", str(copy))[1]
        )
    repaired(capsys, copy, reference)


DAMAGE = {
    "rm -rf done": lambda s: shutil.rmtree(s / "done"),
    "deleted acts zarr.json": lambda s: (s / f"acts/{HOOK}/zarr.json").unlink(),
    "truncate -s 0 done/c/0": lambda s: (s / "done/c/0").write_bytes(b""),
}
NAMED = {
    "rm -rf done": "'done': its metadata (zarr.json) is missing",
    "deleted acts zarr.json": f"'acts/{HOOK}': its metadata (zarr.json) is missing",
    "truncate -s 0 done/c/0": "'done': the manifest entry of shard 0 (rows 0..7) fails its checksum",
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_metadata_damage_is_a_one_line_error_then_rebuilt(copy, reference, capsys, case):
    DAMAGE[case](copy)
    probe = [
        "probe",
        str(copy),
        "--sites",
        "resid_post:1",
        "--target",
        "position",
        "--quiet",
        "--no-save",
        "--plot",
        "none",
        "--device",
        "cpu",
    ]
    for argv in (["info", str(copy)], probe):
        rc, _, err = run(capsys, *argv)
        assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"is damaged: {NAMED[case]}. Run `actstore verify {copy} --repair`" in err
    with pytest.raises(StoreDamagedError, match="is damaged"):
        actstore.open(copy).acts(HOOK, rows=slice(0, 8))
    assert run(capsys, "verify", str(copy))[0] == 1
    repaired(capsys, copy, reference)


@pytest.mark.parametrize(
    "content", [None, b'{"zarr_format": 3,', b'{"zarr_format": 3, "node_type": "group"}']
)
def test_damaged_root_metadata_is_named_not_taken_for_no_store(copy, tmp_path, capsys, content):
    root = copy / "zarr.json"
    root.unlink() if content is None else root.write_bytes(content)
    why = {None: "is missing", b'{"zarr_format": 3,': "is unreadable"}.get(
        content, "has no 'actstore' metadata"
    )
    with pytest.raises(
        StoreDamagedError, match=rf"root metadata \(zarr.json\) {why}.*cannot rebuild it.*delete '"
    ):
        actstore.open(copy)
    for cmd in ("info", "verify"):
        rc, _, err = run(capsys, cmd, str(copy))
        assert rc == 2 and "is damaged: its root metadata" in err and "Create one" not in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a store")
    with pytest.raises(
        StoreNotFoundError, match=r"is a folder but not an actstore store \(it holds notes.txt"
    ):
        actstore.open(tmp_path / "other")  # a folder without a store's objects still is no store


def test_row_index_out_of_range_names_the_valid_rows(reference):
    store = actstore.open(reference)
    for row in (9000, 30, -31):
        with pytest.raises(
            RowIndexError,
            match=rf"Row {row} is out of range: store '.*' has rows 0..29 \(or -30..-1",
        ):
            store.tokens(row)
    assert np.array_equal(store.tokens(-1), store.tokens(29))
    assert np.array_equal(store.acts(HOOK, -30), store.acts(HOOK, 0))
    with pytest.raises(IndexError):  # RowIndexError is an IndexError too
        store.mask(30)


def test_sigkill_during_repair_leaves_a_store_verify_calls_incomplete(copy, reference, capsys):
    for k in (1, 2):
        (copy / f"acts/{HOOK}/c/{k}/0/0").write_bytes(b"")
    env = {**os.environ, "ACTSTORE_FAULT": "before_done:2", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "actstore", "verify", str(copy), "--repair", "--device", "cpu"],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    rc, out, _ = run(capsys, "verify", str(copy))
    assert rc == 1 and "done: rows 16..23 (shard 2): not done" in out, out
    assert (
        "the store is incomplete; finish it with `actstore verify" in out
        and "` again with resume=True" in out
    )
    repaired(capsys, copy, reference)  # the killed run's lock is stale and taken over


def test_verify_reports_a_stale_lock_and_a_held_one(copy, capsys):
    """The lock beside a store: a killed run's (its pid gone) is reported stale with what takes
    it over; one held by a live process says a run may still be writing. Neither is damage."""
    import json
    import socket

    lock = Path(str(copy) + ".lock")
    assert not lock.exists()
    rc, out, _ = run(capsys, "verify", str(copy))
    assert rc == 0 and "lock" not in out
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    rc, out, _ = run(capsys, "verify", str(copy))
    assert (
        rc == 0 and f"note: a stale lock {lock}" in out and "verify --repair` takes it over" in out
    ), out
    lock.write_text(
        json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now"})
    )
    rc, out, _ = run(capsys, "verify", str(copy), "--json")
    assert rc == 0 and "a run holds the lock" in json.loads(out)["lock"], out
    assert lock.exists()  # verify only reports: the lock is taken over by the next write
