"""SIGKILL a real caching process mid-run, resume, and compare byte for byte with an
uninterrupted run. Also: resume refuses a store of another config."""

import os
import signal
import subprocess
import sys
import time

import pytest

import actstore
from actstore.errors import StoreMismatchError

from ..conftest import RESUME_OPTS as OPTS
from ..conftest import store_files

# A slow disk (every object waits 30 ms before its fsync) for the timed kills: the
# pipelined writer otherwise finishes this 4-shard run within milliseconds of the
# first `done`, and a kill "a few milliseconds later" would land after the end.
SLOW_DISK = {**os.environ, "ACTSTORE_SLOW_IO": "0.03"}


def cli_args(out, model, corpus):
    return [
        sys.executable,
        "-m",
        "actstore",
        "cache",
        str(out),
        "--model",
        model,
        "--dataset",
        corpus,
        "--sites",
        OPTS["sites"],
        "--seq-len",
        "16",
        "--n-rows",
        "30",
        "--batch-size",
        "4",
        "--rows-per-chunk",
        "4",
        "--rows-per-shard",
        "8",
        "--quiet",
    ]


def assert_same_store(a, b):
    fa, fb = store_files(a), store_files(b)
    assert sorted(fa) == sorted(fb)
    assert [k for k in fa if fa[k] != fb[k]] == []
    ma, mb = actstore.ActivationStore.open(a).metadata, actstore.ActivationStore.open(b).metadata
    for m in (ma, mb):
        m.pop("created"), m.pop("command_line")
    assert ma == mb


def resume(out, model, corpus, **kw):
    return actstore.cache(
        out=str(out), model=model, dataset=corpus, resume=True, progress=False, **{**OPTS, **kw}
    )


@pytest.mark.parametrize(
    "fault", ["before_write:1", "mid_write:1", "before_done:2", "after_done:0", "mid_write:3"]
)
def test_sigkill_at_each_write_point_then_resume(
    tmp_path, tiny_model, corpus_file, reference, fault
):
    out = tmp_path / "killed.zarr"
    env = {**os.environ, "ACTSTORE_FAULT": fault}
    proc = subprocess.run(
        cli_args(out, tiny_model, corpus_file), env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    partial = actstore.ActivationStore.open(out)
    shard = int(fault.split(":")[1])
    expect_done = shard + 1 if fault.startswith("after_done") else shard
    assert partial.rows_done == expect_done * 8 and not partial.is_complete
    store = resume(out, tiny_model, corpus_file)
    assert store.is_complete
    assert_same_store(out, reference)


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_timed_point_then_resume_with_other_batch_size(
    tmp_path, tiny_model, corpus_file, reference, seed
):
    """Kill a random few milliseconds after the first shard is done: wherever the
    writer is then. The resume uses another batch size (layout comes from the store)."""
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen(
        cli_args(out, tiny_model, corpus_file), env=SLOW_DISK, stderr=subprocess.PIPE
    )
    first_done = out / "done" / "c" / "0"
    deadline = time.monotonic() + 300
    while not first_done.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep([0.0, 0.05][seed])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    done_at_kill = actstore.ActivationStore.open(out).rows_done
    print("rows done at kill", done_at_kill, proc.returncode)
    assert 8 <= done_at_kill < 30, "the kill landed after the run ended"
    store = resume(
        out, tiny_model, corpus_file, batch_size=3, rows_per_chunk=None, rows_per_shard=None
    )
    assert store.is_complete
    assert_same_store(out, reference)


def test_resume_of_complete_store_changes_nothing(tiny_model, corpus_file, copy):
    out = copy
    before = store_files(out)
    resume(out, tiny_model, corpus_file)
    assert store_files(out) == before


@pytest.mark.parametrize(
    "change,field",
    [
        (dict(seq_len=12), "corpus"),
        (dict(sites="resid_post:all"), "sites"),
        (dict(storage_dtype="float16"), "storage_dtype"),
        (dict(n_rows=31), "layout"),
        (dict(rows_per_shard=4), "layout"),
    ],
)
def test_resume_refuses_another_config_and_leaves_store_untouched(
    tiny_model, corpus_file, copy, change, field
):
    out = copy
    before = store_files(out), (out / "zarr.json").read_bytes()
    with pytest.raises(StoreMismatchError, match=rf"another model, corpus or config.*\n  {field}"):
        resume(out, tiny_model, corpus_file, **change)
    assert (store_files(out), (out / "zarr.json").read_bytes()) == before


def test_resume_refuses_another_model(tmp_path, tiny_model, corpus_file, copy):
    from actstore.demo import build_random_gpt2

    from ..conftest import TINY

    other = build_random_gpt2(tmp_path / "other", seed=99, **TINY)
    out = copy
    before = store_files(out)
    with pytest.raises(StoreMismatchError, match=r"model.fingerprint"):
        resume(out, str(other), corpus_file)
    assert store_files(out) == before


def _undo(out, shards):
    import zarr

    done = zarr.open_group(str(out), mode="r+")["done"]
    for k in shards:
        done[k] = False


def test_resume_seeks_to_the_planned_shard_and_tokenises_only_its_documents(
    tmp_path, tiny_model, corpus_file, reference, copy, monkeypatch
):
    import numpy as np
    import zarr

    from actstore.corpus import PLAN_FIELDS, plan_checkpoint, rows, stop_after

    out = copy
    plan = zarr.open_group(str(out), mode="r")["plan"]
    assert plan.attrs["fields"] == list(PLAN_FIELDS) and plan.metadata.dimension_names == (
        "boundary",
        "field",
    )
    assert plan.shape == (5, len(PLAN_FIELDS))  # 4 shards' starts, then the end of row 29
    _undo(out, [2])
    (tmp_path / "counts").mkdir()
    monkeypatch.setattr(rows, "_COUNT_DOCS", str(tmp_path / "counts"))
    resume(out, tiny_model, corpus_file)
    assert_same_store(out, reference)
    counts = {
        f.name.split(".")[0]: sum(map(int, f.read_text().split()))
        for f in (tmp_path / "counts").iterdir()
    }
    p = np.asarray(plan[...])
    assert counts["rows"] == stop_after(plan_checkpoint(p, 3)) - plan_checkpoint(p, 2).doc < 20
    assert counts["plan"] <= 60  # the count of the corpus (once; the store's plan is kept)


def test_a_store_without_a_plan_resumes_by_the_sequential_read(
    tiny_model, corpus_file, reference, copy
):
    """Stores written before the plan existed: the rows done before the first shard to
    do say where it starts, and the reader goes on from there."""
    import shutil

    out = copy
    shutil.rmtree(out / "plan")
    _undo(out, [1, 3])
    resume(out, tiny_model, corpus_file)
    want = {k: v for k, v in store_files(reference).items() if not k.startswith("plan/")}
    assert store_files(out) == want


@pytest.mark.parametrize("damage", ["bit flip", "missing"])
def test_a_damaged_plan_falls_back_to_the_sequential_read(
    tiny_model, corpus_file, reference, copy, damage
):
    out = copy
    obj = out / "plan" / "c" / "0" / "0"
    if damage == "missing":
        obj.unlink()
    else:
        data = bytearray(obj.read_bytes())
        data[8] ^= 0xFF
        obj.write_bytes(bytes(data))
    _undo(out, [1, 3])
    resume(out, tiny_model, corpus_file)
    got, want = store_files(out), store_files(reference)
    assert {k: v for k, v in got.items() if k != "plan/c/0/0"} == {
        k: v for k, v in want.items() if k != "plan/c/0/0"
    }
