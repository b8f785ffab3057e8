"""Multi-process caching on CPU (gloo): torchrun, accelerate launch, and bare
environment variables, against the single-process reference store, byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import actstore
from actstore.parallel import Group

from ..conftest import needs_tl4, resume_cli_args, store_files
from ..helpers import free_port

pytestmark = pytest.mark.slow
LAUNCH_TIMEOUT = 240


def _args(out: Path, model: str, corpus: str, *extra: str) -> list[str]:
    return resume_cli_args(out, model, corpus, "--device", "cpu", *extra)


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "ACTSTORE_FAULT")
    }
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return env


def _run(cmd: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, env=_env(**env), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT
    )


def _torchrun(args: list[str], nproc: int = 2, **env: str) -> subprocess.CompletedProcess[str]:
    return _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-port",
            str(free_port()),
            "-m",
            "actstore",
            *args,
        ],
        **env,
    )


def _bare_ranks(
    args: list[str], faults: dict[int, str], env_of: dict[int, dict[str, str]] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Two processes started by hand with the variables every launcher sets (plus
    ``env_of[rank]``)."""
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = _env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        if rank in faults:
            env["ACTSTORE_FAULT"] = faults[rank]
        env.update((env_of or {}).get(rank, {}))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "actstore", *args],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=LAUNCH_TIMEOUT)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_ownership_is_disjoint_and_complete():
    todo = [0, 2, 3, 5, 8, 9, 11]
    shares = [Group(rank=r, world=3).owned(todo) for r in range(3)]
    assert sorted(sum(shares, [])) == todo and shares[0] == [0, 5, 11]


def test_slurm_script_two_processes_write_the_single_process_store(
    tmp_path, tiny_model, corpus_file, reference
):
    """scripts/slurm_cache.sh on one 'node' whose scontrol and srun are shims: torchrun
    with c10d rendezvous starts 2 CPU processes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho 127.0.0.1\n")
    # drop --ntasks-per-node=1, run once
    (bin_dir / "srun").write_text('#!/bin/sh\nshift\nexec "$@"\n')
    for shim in bin_dir.iterdir():
        shim.chmod(0o755)
    out = tmp_path / "two.zarr"
    script = Path(__file__).resolve().parents[2] / "scripts" / "slurm_cache.sh"
    # the flags after 'cache OUT'
    args = [a for a in _args(out, tiny_model, corpus_file)[2:] if a != "--quiet"]
    r = _run(
        ["bash", str(script), str(out), *args],
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        PYTHON=sys.executable,
        SLURM_JOB_NODELIST="node1",
        SLURM_JOB_NUM_NODES="1",
        NPROC_PER_NODE="2",
        MASTER_PORT=str(free_port()),
        SLURM_JOB_ID="4242",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes; each writes its own shards" in r.stderr
    assert store_files(out) == store_files(reference)
    store = actstore.ActivationStore.open(out)
    assert store.is_complete and store.stats("blocks.0.hook_resid_post").count == 30 * 16


def test_a_killed_process_leaves_its_shards_the_others_finish_and_resume_completes(
    tmp_path, tiny_model, corpus_file, reference
):
    out = tmp_path / "killed.zarr"
    # 4 shards dealt round-robin: rank 0 owns 0 and 2, rank 1 owns 1 and 3; rank 1 dies writing shard 1
    r0, r1 = _bare_ranks(_args(out, tiny_model, corpus_file), {1: "mid_write:1"})
    assert r1.returncode == -9
    assert (
        r0.returncode == 2
        and "Another process of this run stopped" in r0.stderr
        and "--resume" in r0.stderr
    )
    assert list(actstore.ActivationStore.open(out).done) == [True, False, True, False]
    r = _torchrun(_args(out, tiny_model, corpus_file, "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert store_files(out) == store_files(reference)


def test_a_late_rank_deals_the_shards_as_the_others_did(
    tmp_path, tiny_model, corpus_file, reference
):
    """Rank 1 reaches the deal of the shards 3 s late, when rank 0 has long finished its
    own: it must still take shards 1 and 3 (the manifest as it stood before anyone wrote),
    not deal the shards left at that moment anew (which left shard 1 to nobody)."""
    out = tmp_path / "late.zarr"
    r0, r1 = _bare_ranks(_args(out, tiny_model, corpus_file), {}, {1: {"ACTSTORE_PAUSE": "deal:3"}})
    assert r0.returncode == r1.returncode == 0, r0.stderr[-2000:] + r1.stderr[-2000:]
    assert np.asarray(actstore.ActivationStore.open(out).done).all()
    assert store_files(out) == store_files(reference)


def test_a_run_that_ends_with_a_shard_not_done_is_an_error(copy):
    """The last check of every run: all shards done, or an error naming --resume."""
    import zarr

    from actstore.capture.engine import _finish
    from actstore.errors import WriterError

    out = copy
    group = zarr.open_group(str(out), mode="r+")
    _finish(group, str(out), ["blocks.0.hook_resid_post"])  # a complete store passes
    group["done"][1] = False
    with pytest.raises(WriterError, match=r"shards \[1\].*--resume"):
        _finish(group, str(out), ["blocks.0.hook_resid_post"])


def test_all_processes_killed_then_accelerate_launch_resumes(
    tmp_path, tiny_model, corpus_file, reference
):
    out = tmp_path / "all.zarr"
    r0, r1 = _bare_ranks(
        _args(out, tiny_model, corpus_file), {0: "before_done:2", 1: "mid_write:1"}
    )
    assert r0.returncode == r1.returncode == -9
    assert list(actstore.ActivationStore.open(out).done) == [True, False, False, False]
    r = _run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            "-m",
            "actstore",
            *_args(out, tiny_model, corpus_file, "--resume"),
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert store_files(out) == store_files(reference)
    assert np.asarray(actstore.ActivationStore.open(out).done).all()


def test_four_processes_each_tokenise_a_quarter_of_the_corpus(
    tmp_path, tiny_model, corpus_file, reference
):
    """4 processes, 4 shards: process 0 tokenises the corpus once to plan it (the pass
    that counts its rows), then each process tokenises only its own shard's documents."""
    import zarr

    from actstore.corpus import plan_checkpoint, stop_after

    counts = tmp_path / "counts"
    counts.mkdir()
    out = tmp_path / "four.zarr"
    r = _torchrun(_args(out, tiny_model, corpus_file), nproc=4, ACTSTORE_COUNT_DOCS=str(counts))
    assert r.returncode == 0, r.stderr[-3000:]
    got, want = store_files(out), store_files(reference)
    assert sorted(got) == sorted(want)
    differ = sorted(name for name in want if got[name] != want[name])
    assert not differ, (
        f"files that differ from the single-process store: {differ}\n{r.stderr[-3000:]}"
    )
    tokenised = {f.name: sum(map(int, f.read_text().split())) for f in counts.iterdir()}
    per_rank = sorted(n for name, n in tokenised.items() if name.startswith("rows."))
    plans = [n for name, n in tokenised.items() if name.startswith("plan.")]
    plan = np.asarray(zarr.open_group(str(out), mode="r")["plan"][...])
    used = stop_after(plan_checkpoint(plan, 4))  # the documents the 30 rows come from
    own = sorted(
        stop_after(plan_checkpoint(plan, k + 1)) - plan_checkpoint(plan, k).doc for k in range(4)
    )
    print("documents tokenised per process:", per_rank, "plan:", plans, "of", used)
    # once, by one process (a tokenizer call takes the whole small corpus)
    assert plans == [60] and used < 60
    assert len(per_rank) == 4 and per_rank == own
    # not ~2.5x the corpus, as before the plan
    assert max(per_rank) <= used / 4 + 4 and sum(per_rank) <= used + 3


def test_single_process_group_gathers_its_own_part():
    g = Group()
    assert g.all_gather({"rows": [1, 2]}, "test") == [{"rows": [1, 2]}] and g.owned([4, 5]) == [
        4,
        5,
    ]
    assert g.on_main(lambda: 7, "test") == 7


@needs_tl4  # actstore patch
def test_patching_sweep_shared_by_two_processes_equals_one(tmp_path, tiny_model):
    import zarr

    args = [
        "patch",
        "--model",
        tiny_model,
        "--task",
        "ioi",
        "--n-pairs",
        "6",
        "--batch-pairs",
        "2",
        "--sweep",
        "attn_head_out_all_pos",
        "--method",
        "both",
        "--device",
        "cpu",
        "--quiet",
    ]
    one = _run([sys.executable, "-m", "actstore", *args, "--out", str(tmp_path / "one.zarr")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun([*[a for a in args if a != "--quiet"], "--out", str(tmp_path / "two.zarr")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes share the 3 batches of pairs" in two.stdout
    a, b = (
        zarr.open_group(str(tmp_path / f"{n}.zarr"), mode="r")["patching/attn_head_out_all_pos"]
        for n in ("one", "two")
    )
    names = sorted(a.array_keys())
    assert names == sorted(b.array_keys()) and "attribution_logit_diff" in names
    for name in names:
        assert np.array_equal(a[name][...], b[name][...]), name
