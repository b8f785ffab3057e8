"""Concurrent commands on one store (issue 25): the matrix of {verify, verify --repair,
cache --resume, cache (same out, no flag), cache --overwrite, the loader, a job that
writes results} run while {a live process holds the store's lock, a stale lock of a dead
process is left, no lock}.

The invariant, for every cell: a clear refusal (exit 2, ``actstore: error: ...``) with no
byte of the store changed, or a correct result (the store equal to an uninterrupted run
and verifying clean, or the rows asked); and every piece of advice is right to follow at
that moment (never `--repair` while a live run writes the store). Then a real writer: a
resumed run on a slow disk, while the other commands run against it in this process;
it finishes, and its store equals an uninterrupted run.

The second command runs in this process (``actstore.cli.main``); the live lock holder is
a plain sleeping subprocess (no torch to import), the real writer one `actstore cache`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

import actstore
from actstore.capture.lock import lock_path
from actstore.cli import main
from actstore.errors import RowsNotDoneError
from actstore.store import verify_store

from ..conftest import store_files
from .conftest import demo_cli

HOOK = "blocks.0.hook_resid_post"
ARGS = demo_cli(Path("OUT"))[4:]  # `actstore cache OUT ...` flags: 8 rows, 4 shards of 2 rows


def cache_argv(out: Path, *extra: str) -> list[str]:
    return ["cache", str(out), *ARGS[1:], *extra]


def digest(path: Path) -> dict[str, str]:
    """Every file of a store (root zarr.json included), by relative path: its sha256."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def assert_same_store(a: Path, b: Path) -> None:
    fa, fb = store_files(a), store_files(b)
    assert sorted(fa) == sorted(fb) and [k for k in fa if fa[k] != fb[k]] == []


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run, made by the CLI (so its command line is `actstore cache ...`)."""
    out = tmp_path_factory.mktemp("ref") / "s.zarr"
    assert main(cache_argv(out)) == 0
    return out


def unfinished(store: Path, shards: tuple[int, ...] = (3,)) -> None:
    """As a run interrupted before ``shards`` were done."""
    done = zarr.open_group(str(store), mode="r+")["done"]
    for k in shards:
        done[k] = False


def damaged(store: Path) -> None:
    """Unfinished, and a finished shard (1) whose activations fail their checksum."""
    unfinished(store)
    chunk = store / "acts" / HOOK / "c" / "1" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[40] ^= 0xFF
    chunk.write_bytes(bytes(data))


PREPARE: dict[str, Callable[[Path], None]] = {
    "complete": lambda s: None,
    "unfinished": unfinished,
    "damaged": damaged,
}


@pytest.fixture(scope="module")
def sleeper():
    """A live process that is not writing anything: the holder of a 'live' lock."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def hold_lock(store: Path, pid: int) -> None:
    with open(lock_path(str(store)), "w") as f:
        json.dump({"pid": pid, "host": socket.gethostname(), "started": "2026-12-06T00:00:00"}, f)


def re_search(pattern: str, text: str) -> bool:
    return re.search(pattern, text, re.S) is not None


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


REFUSED = (
    r"actstore: error: Store '.*' is being written by process {pid} .*Wait for that run to finish"
)
WAIT = r"a run is writing .*process {pid}.*wait for that run to finish"


def check_verify(lock: str, pid: int, s: Path, ref: Path, capsys) -> None:
    rc, out, _ = run(["verify", str(s)], capsys)
    assert (
        rc == 1
        and f"acts/{HOOK}: rows 2..3 (shard 1): fails its checksum" in out
        and "shard 3 is not finished" in out
    )
    if lock == "live":  # shard 3 may be in progress: the advice is to wait, never to repair now
        assert re_search(WAIT.format(pid=pid), out) and "--repair is refused while it runs" in out
        assert "run again with --repair" not in out
    else:
        assert "run again with --repair" in out
        assert ("a stale lock" in out and "takes it over" in out) == (lock == "stale")


def check_repair(lock: str, pid: int, s: Path, ref: Path, capsys) -> None:
    rc, out, err = run(["verify", str(s), "--repair", "--device", "cpu"], capsys)
    if lock == "live":
        assert rc == 2 and re_search(REFUSED.format(pid=pid), err) and out == ""
    else:
        assert rc == 0 and "repaired: every problem fixed and verified" in out
        assert_same_store(s, ref)


def check_resume(lock: str, pid: int, s: Path, ref: Path, capsys) -> None:
    rc, _, err = run(cache_argv(s, "--resume"), capsys)
    if lock == "live":
        assert rc == 2 and re_search(REFUSED.format(pid=pid), err)
    else:
        assert rc == 0 and verify_store(str(s), progress=False) == []
        assert_same_store(s, ref)


def check_overwrite(lock: str, pid: int, s: Path, ref: Path, capsys) -> None:
    rc, _, err = run(cache_argv(s, "--overwrite"), capsys)
    if lock == "live":
        assert rc == 2 and re_search(REFUSED.format(pid=pid), err)
    else:
        assert rc == 0 and verify_store(str(s), progress=False) == []
        assert_same_store(s, ref)


def check_cache_again(lock: str, pid: int, s: Path, ref: Path, capsys) -> None:
    rc, _, err = run(cache_argv(s), capsys)
    assert rc == 2
    assert re_search(
        REFUSED.format(pid=pid) if lock == "live" else r"pass --resume .* or --overwrite", err
    )


def check_loader(lock: str, pid: int, s: Path, ref: Path, capsys) -> None:
    store = actstore.open(s)
    with pytest.raises(RowsNotDoneError, match=r"rows not yet written \(first: 6..7\)") as e:
        store.loader("resid_post:0", batch_size=8)
    msg = str(e.value)
    # the advice: wait; repairing is only the fallback should the holder be no actstore run
    if lock == "live":
        assert (
            re_search(WAIT.format(pid=pid), msg) and "the store is incomplete; finish it" not in msg
        )
    else:
        assert (
            "the store is incomplete; finish it with `actstore verify" in msg and "--repair" in msg
        )
        assert ("takes over the stale lock" in msg) == (lock == "stale")
    # done rows: read
    got = [b[HOOK] for b in store.loader("resid_post:0", batch_size=8, rows=slice(0, 6), seed=1)]
    want = [
        b[HOOK]
        for b in actstore.open(ref).loader("resid_post:0", batch_size=8, rows=slice(0, 6), seed=1)
    ]
    assert len(got) == len(want) > 0 and all(np.array_equal(a, b) for a, b in zip(got, want))


def check_job(lock: str, pid: int, s: Path, ref: Path, capsys) -> None:
    rc, _, err = run(
        ["analyze", "logit-lens", str(s), "--rows", "0:1", "--figure", "none", "--device", "cpu"],
        capsys,
    )
    if lock == "live":
        assert rc == 2 and re_search(REFUSED.format(pid=pid), err)
    else:
        assert rc == 0 and any(
            r.startswith("analysis/logit_lens/") for r in actstore.open(s).results()
        )
        assert verify_store(str(s), progress=False) == []


COMMANDS = {  # command -> (the store it runs on, its check)
    "verify": ("damaged", check_verify),
    "repair": ("damaged", check_repair),
    "resume": ("unfinished", check_resume),
    "overwrite": ("unfinished", check_overwrite),
    "cache-again": ("unfinished", check_cache_again),
    "loader": ("unfinished", check_loader),
    "job": ("complete", check_job),
}
READ_ONLY = ("verify", "loader", "cache-again")  # never change a byte, whatever the lock


@pytest.mark.parametrize("lock", ["live", "stale", "none"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_command_beside_a_lock(reference, copy, sleeper, dead_pid, capsys, command, lock):
    store = copy
    state, check = COMMANDS[command]
    PREPARE[state](store)
    pid = {"live": sleeper, "stale": dead_pid, "none": 0}[lock]
    if lock != "none":
        hold_lock(store, pid)
    before = digest(store)
    check(lock, pid, store, reference, capsys)
    if lock == "live" or command in READ_ONLY:  # refused, or read only: no byte changed
        assert digest(store) == before
    assert os.path.exists(lock_path(str(store))) == (
        lock == "live" or (lock == "stale" and command in ("verify", "loader"))
    )


def test_commands_beside_a_real_writer(reference, copy, capsys):
    """A resumed run on a slow disk; meanwhile verify, verify --repair, the loader and cache
    --overwrite run here. Each is refused, or reports what it sees with the advice to wait;
    the writer finishes, and the store equals an uninterrupted run."""
    store = copy
    unfinished(store, (1, 2, 3))
    env = {**os.environ, "ACTSTORE_SLOW_IO": "0.15", "HF_HUB_OFFLINE": "1"}
    writer = subprocess.Popen(
        [sys.executable, "-m", "actstore", *cache_argv(store, "--resume")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock, deadline = lock_path(str(store)), time.monotonic() + 120
    while writer.poll() is None and time.monotonic() < deadline:
        if os.path.exists(lock) and f'"pid": {writer.pid}' in Path(lock).read_text():
            break
        time.sleep(0.02)
    assert writer.poll() is None, writer.stderr.read() if writer.stderr else ""
    try:
        rc, out, _ = run(["verify", str(store)], capsys)
        assert (
            rc == 1
            and re_search(WAIT.format(pid=writer.pid), out)
            and "run again with --repair" not in out
        )
        assert "the store is incomplete; finish it" not in out
        rc, out, err = run(["verify", str(store), "--repair", "--device", "cpu"], capsys)
        assert rc == 2 and re_search(REFUSED.format(pid=writer.pid), err)
        with pytest.raises(RowsNotDoneError, match=WAIT.format(pid=writer.pid)):
            actstore.open(store).loader("resid_post:0", batch_size=8)
        rc, _, err = run(cache_argv(store, "--overwrite"), capsys)
        assert rc == 2 and re_search(REFUSED.format(pid=writer.pid), err)
        assert writer.poll() is None, (
            "the writer finished before the commands ran beside it: slow it down"
        )
    finally:
        _, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err
    assert not os.path.exists(lock) and verify_store(str(store), progress=False) == []
    assert_same_store(store, reference)


def test_repair_of_no_store_makes_no_lock_and_no_folder(tmp_path, capsys):
    """The lock is taken first, but a path that holds no store is said before the lock file
    (and the folders above it) would be made."""
    missing = tmp_path / "no" / "s.zarr"
    rc, _, err = run(["verify", str(missing), "--repair"], capsys)
    assert rc == 2 and "actstore: error: No store at" in err and os.listdir(tmp_path) == []


@pytest.mark.parametrize("pid", [-1, 0, 10**30])
def test_a_lock_naming_no_process_is_stale(copy, capsys, pid):
    """pid -1 or 0 (os.kill would ask about a process group) or one beyond any pid: no run holds it."""
    store = copy
    unfinished(store)
    hold_lock(store, pid)
    with pytest.raises(
        RowsNotDoneError,
        match=r"finish it with `actstore verify .* --repair`.*takes over the stale lock",
    ):
        actstore.open(store).loader("resid_post:0", batch_size=8)
    rc, out, _ = run(["verify", str(store)], capsys)
    assert rc == 1 and "note: a stale lock" in out and "run again with --repair" not in out
    assert "the store is incomplete; finish it with `actstore verify" in out


def test_the_advice_names_the_store_where_it_is(tmp_path, reference):
    """A copied (or moved) store: the resume command advised is for this store, not the one
    its command line first wrote (which it would resume, or refuse as another run)."""
    store = tmp_path / "a copy.zarr"
    shutil.copytree(reference, store)
    unfinished(store)
    with pytest.raises(RowsNotDoneError) as e:
        actstore.open(store).loader("resid_post:0", batch_size=8)
    assert f"`actstore verify '{store}' --repair`" in str(
        e.value
    ) and f"`actstore cache '{store}' --model" in str(e.value)
    assert str(reference) not in str(e.value)
