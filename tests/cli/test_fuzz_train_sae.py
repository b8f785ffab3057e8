"""The train_sae part of the bad-input matrix: scripts/train_sae.py's flags, paths and
checkpoint states (resumed with each configuration field changed, on another store, from
a damaged or foreign file), as a table of command lines run in-process.

The invariant, for every command line: the outcome is a clear error (exit 2, one line
``train_sae: error: ...`` naming the fix, or argparse's usage error) that leaves the store,
the checkpoint and --out byte for byte as they were, or a finished run whose SAE file is
labelled with the right site and has the right shape. Never a traceback, never a hang
(each run has an alarm), never a silent resume of another configuration.

Two stores of the demo model (180 tokens each, the second of another corpus) and one
checkpoint of the base configuration are made once; each case works on copies.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import signal
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actstore

from ..conftest import DOCS

STORE_OPTS = dict(
    model="actstore-demo",
    dtype="float32",
    storage_dtype="float32",
    device="cpu",
    progress=False,
    sites="resid_post:0,resid_post:1,z:1,pattern:1",
    seq_len=16,
    n_rows=12,
    batch_size=4,
    rows_per_chunk=2,
    rows_per_shard=4,
)
# the checkpoint's configuration
BASE = [
    "--site",
    "resid_post:1",
    "--k",
    "4",
    "--expansion",
    "2",
    "--batch-size",
    "32",
    "--lr",
    "0.003",
    "--seed",
    "0",
    "--device",
    "cpu",
    "--log-every",
    "100",
]
HANG_S = 20  # a run of these tiny stores takes about a second


@pytest.fixture(scope="module")
def world(tmp_path_factory, train_sae):
    """a.zarr, b.zarr (another corpus, same model and sites) and base.pt: 3 steps of BASE on a."""
    d = tmp_path_factory.mktemp("train_sae")
    os.environ.setdefault("TQDM_DISABLE", "1")
    actstore.cache(out=str(d / "a.zarr"), dataset="actstore-demo", **STORE_OPTS)
    actstore.cache(out=str(d / "b.zarr"), dataset=DOCS * 3, **STORE_OPTS)
    code, err = run(
        train_sae, [str(d / "a.zarr"), *BASE, "--steps", "3", "--checkpoint", str(d / "base.pt")]
    )
    assert code == 0, err
    return d


def digest(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), by path."""
    files = [
        f
        for p in paths
        for f in ([p] if p.is_file() else sorted(p.rglob("*")) if p.is_dir() else [])
    ]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}


def _alarm(signum, frame):
    raise TimeoutError(f"train_sae ran past {HANG_S} s: a hang")


def run(train_sae, argv: list[str]) -> tuple[int, str]:
    """``python scripts/train_sae.py argv`` in this process: (exit code, stderr). Through
    sys.argv, so that the same call runs the script as it was before main took argv."""
    err = io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        with (
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(io.StringIO()),
            _argv(["train_sae.py", *argv]),
        ):
            try:
                code = train_sae.main()
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return (0 if code is None else code), err.getvalue()


@contextlib.contextmanager
def _argv(argv: list[str]):
    saved, sys.argv = sys.argv, argv
    try:
        yield
    finally:
        sys.argv = saved


@dataclass(frozen=True)
class Case:
    """One command line: ``args`` after the store (``{a}``, ``{b}``, ``{ck}``, ``{out}``,
    ``{dir}`` filled in); ``error`` the message's pattern (None: it must succeed, giving
    an SAE of ``hook`` with W_enc of ``shape``)."""

    name: str
    args: list[str]
    error: str | None = None
    store: str = "{a}"
    checkpoint: Callable[[dict], object] | None = (
        None  # makes {ck} from the base checkpoint (None: no file)
    )
    out_exists: bool = False
    hook: str = "blocks.1.hook_resid_post"
    shape: tuple[int, int] = (128, 256)
    flags: list[str] = field(default_factory=lambda: list(BASE))


def changed(**config) -> Callable[[dict], object]:
    """The base checkpoint with its recorded configuration (and loader state) edited."""

    def edit(ckpt: dict) -> dict:
        ckpt["config"] = {**ckpt.get("config", {}), **config}
        ckpt["loader"] = {
            **ckpt["loader"],
            **{k: v for k, v in config.items() if k in ckpt["loader"]},
        }
        return ckpt

    return edit


def without_config(ckpt: dict) -> dict:
    return {k: v for k, v in ckpt.items() if k != "config"}


def base(ckpt: dict) -> dict:
    return ckpt


GARBAGE = {"bytes": b"\x00not a checkpoint\xff" * 10, "empty": b"", "text": b"sae weights\n"}
CASES = [
    # flags
    Case(
        "k above d_sae",
        ["--k", "300", "--steps", "2"],
        r"--k 300 is more than the SAE's 256 latents.*pass --k 256 or less",
    ),
    Case(
        "k 0", ["--k", "0", "--steps", "2"], r"argument --k: expected a positive integer; got '0'"
    ),
    Case("k negative", ["--k=-3", "--steps", "2"], r"argument --k: expected a positive integer"),
    Case(
        "expansion 0",
        ["--expansion", "0", "--steps", "2"],
        r"argument --expansion: expected a positive integer",
    ),
    Case(
        "expansion negative",
        ["--expansion=-1", "--steps", "2"],
        r"argument --expansion: expected a positive",
    ),
    Case("steps 0", ["--steps", "0"], r"argument --steps: expected a positive integer"),
    Case("steps negative", ["--steps=-5"], r"argument --steps: expected a positive integer"),
    Case(
        "batch-size 0",
        ["--batch-size", "0", "--steps", "2"],
        r"argument --batch-size: expected a positive",
    ),
    Case(
        "batch-size negative",
        ["--batch-size=-8", "--steps", "2"],
        r"argument --batch-size: expected a positive",
    ),
    Case("lr 0", ["--lr", "0", "--steps", "2"], r"argument --lr: expected a positive number"),
    Case(
        "lr negative", ["--lr=-0.1", "--steps", "2"], r"argument --lr: expected a positive number"
    ),
    Case("lr nan", ["--lr", "nan", "--steps", "2"], r"argument --lr: expected a positive number"),
    Case(
        "save-every 0",
        ["--save-every", "0", "--steps", "2", "--checkpoint", "{ck}"],
        r"argument --save-every: expected a positive integer",
    ),
    Case(
        "seed negative",
        ["--seed=-1", "--steps", "2"],
        r"argument --seed: expected an integer from 0 to 2\*\*64-1",
    ),
    Case(
        "log-every 0",
        ["--log-every", "0", "--steps", "2"],
        r"argument --log-every: expected a positive",
    ),
    Case(
        "batch larger than the store (a hang)",
        ["--batch-size", "1000", "--steps", "2"],
        r"--batch-size 1000 is more than the 180 tokens .*pass --batch-size 180 or less",
    ),
    # sites
    Case(
        "site range",
        ["--site", "resid_post:0-1", "--steps", "2"],
        r"names 2 sites .*pass one, e\.g\. --site",
    ),
    Case("site all", ["--site", "resid_post:all", "--steps", "2"], r"names 2 sites .*pass one"),
    Case(
        "site empty",
        ["--site", "", "--steps", "2"],
        r"names no site; pass one of the store's, e\.g\. --site",
    ),
    Case("site of commas", ["--site", ",", "--steps", "2"], r"names no site; pass one"),
    Case(
        "site not stored",
        ["--site", "resid_post:3", "--steps", "2"],
        r"resid_post.*This store holds",
    ),
    Case(
        "site of heads",
        ["--site", "z:1.0", "--steps", "2"],
        r"selects heads.*Pass the hook without",
    ),
    Case("site of patterns", ["--site", "pattern:1", "--steps", "2"], r"not one vector per token"),
    # paths and devices
    Case("store missing", ["--steps", "2"], r"nope\.zarr", store="{dir}/nope.zarr"),
    Case(
        "out in a missing folder",
        ["--steps", "2", "--out", "{dir}/none/sae.pt"],
        r"--out .*does not exist; create it \(mkdir -p",
    ),
    Case(
        "out is a folder",
        ["--steps", "2", "--out", "{dir}"],
        r"--out .* is a folder; pass a file path",
    ),
    Case(
        "out exists",
        ["--steps", "2", "--out", "{out}"],
        r"--out .* already exists.*pass --overwrite",
        out_exists=True,
    ),
    Case(
        "out is the checkpoint",
        ["--steps", "5", "--out", "{ck}", "--checkpoint", "{ck}"],
        r"same file.*Pass two paths",
        checkpoint=base,
    ),
    Case(
        "checkpoint in a missing folder",
        ["--steps", "2", "--checkpoint", "{dir}/none/ck.pt"],
        r"--checkpoint .*does not exist; create it",
    ),
    Case(
        "device cuda without a GPU",
        ["--steps", "2", "--device", "cuda"],
        r"no CUDA device; pass --device cpu",
    ),
    Case("device unknown", ["--steps", "2", "--device", "gpu"], r"Unknown device 'gpu'; pass auto"),
    # checkpoint states: resumed with another configuration
    Case(
        "resume another site",
        ["--steps", "5", "--site", "resid_post:0", "--checkpoint", "{ck}"],
        r"made with --site blocks\.1\.hook_resid_post.*this run has --site blocks\.0\.hook_resid_post.*"
        r"new --checkpoint path",
        checkpoint=base,
    ),
    Case(
        "resume another k",
        ["--steps", "5", "--k", "8", "--checkpoint", "{ck}"],
        r"made with --k 4; this run has --k 8: pass the same flags",
        checkpoint=base,
    ),
    Case(
        "resume another expansion",
        ["--steps", "5", "--expansion", "4", "--checkpoint", "{ck}"],
        r"made with --expansion 2 \(d_sae 256\); this run has --expansion 4 \(d_sae 512\)",
        checkpoint=base,
    ),
    Case(
        "resume another batch size",
        ["--steps", "5", "--batch-size", "16", "--checkpoint", "{ck}"],
        r"made with --batch-size 32; this run has --batch-size 16",
        checkpoint=base,
    ),
    Case(
        "resume another lr",
        ["--steps", "5", "--lr", "0.01", "--checkpoint", "{ck}"],
        r"made with --lr 0\.003; this run has --lr 0\.01",
        checkpoint=base,
    ),
    Case(
        "resume another seed",
        ["--steps", "5", "--seed", "1", "--checkpoint", "{ck}"],
        r"made with --seed 0; this run has --seed 1",
        checkpoint=base,
    ),
    Case(
        "resume another store",
        ["--steps", "5", "--checkpoint", "{ck}"],
        r"made on another store than .*b\.zarr.*corpus.*Pass the store it was made on",
        store="{b}",
        checkpoint=base,
    ),
    Case(
        "resume another world size",
        ["--steps", "5", "--checkpoint", "{ck}"],
        r"made by 2 processes; this run has 1: run as many",
        checkpoint=changed(world_size=2),
    ),
    Case(
        "resume past --steps",
        ["--steps", "2", "--checkpoint", "{ck}", "--out", "{out}"],
        r"at step 3, past --steps 2; pass --steps 3 or more",
        checkpoint=base,
    ),
    Case(
        "resume an old checkpoint",
        ["--steps", "5", "--checkpoint", "{ck}"],
        r"did not record its configuration.*new --checkpoint path",
        checkpoint=without_config,
    ),
    Case(
        "resume a foreign dict",
        ["--steps", "5", "--checkpoint", "{ck}"],
        r"not a train_sae checkpoint; pass a new --checkpoint",
        checkpoint=lambda c: {"weights": torch.zeros(2)},
    ),
    Case(
        "resume damaged weights",
        ["--steps", "5", "--checkpoint", "{ck}"],
        r"does not fit its own recorded configuration.*damaged: pass a new --checkpoint",
        checkpoint=lambda c: {**c, "sae": {**c["sae"], "W_enc": torch.zeros(3, 3)}},
    ),
    Case(
        "resume a damaged loader state",
        ["--steps", "5", "--checkpoint", "{ck}"],
        r"not a train_sae checkpoint; pass a new --checkpoint",
        checkpoint=lambda c: {**c, "loader": [1, 2]},
    ),
    *[
        Case(
            f"resume garbage ({kind})",
            ["--steps", "5", "--checkpoint", "{ck}"],
            r"cannot be read as a checkpoint.*pass a new --checkpoint",
            checkpoint=lambda c, b=data: b,
        )
        for kind, data in GARBAGE.items()
    ],
    # correct results
    Case("fresh run", ["--steps", "3", "--out", "{out}"]),
    Case(
        "fresh run, layer 0 by hook name",
        ["--steps", "2", "--site", "blocks.0.hook_resid_post", "--out", "{out}"],
        hook="blocks.0.hook_resid_post",
    ),
    Case(
        "fresh run of z",
        ["--steps", "2", "--site", "z:1", "--expansion", "1", "--out", "{out}"],
        hook="blocks.1.attn.hook_z",
        shape=(128, 128),
    ),
    Case(
        "fresh run, batch of the whole store",
        ["--steps", "2", "--batch-size", "180", "--out", "{out}"],
    ),
    Case(
        "resume the same configuration",
        ["--steps", "5", "--checkpoint", "{ck}", "--out", "{out}"],
        checkpoint=base,
    ),
    Case(
        "resume at its last step",
        ["--steps", "3", "--checkpoint", "{ck}", "--out", "{out}"],
        checkpoint=base,
    ),
    Case(
        "out replaced with --overwrite",
        ["--steps", "2", "--out", "{out}", "--overwrite"],
        out_exists=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_train_sae_command_line(case: Case, world: Path, tmp_path: Path, train_sae) -> None:
    if case.name == "device cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    ck, out = tmp_path / "ck.pt", tmp_path / "sae.pt"
    if case.checkpoint is not None:
        made = case.checkpoint(torch.load(world / "base.pt", weights_only=True))
        ck.write_bytes(made) if isinstance(made, bytes) else torch.save(made, ck)
    if case.out_exists:
        out.write_bytes(b"a previous SAE")
    names = {"a": world / "a.zarr", "b": world / "b.zarr", "ck": ck, "out": out, "dir": tmp_path}
    argv = [case.store.format(**names), *case.flags, *(x.format(**names) for x in case.args)]
    touched = [world / "a.zarr", world / "b.zarr", tmp_path]
    before = digest(touched)
    code, err = run(train_sae, argv)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    if case.error is None:
        assert code == 0, (argv, err)
        saved = torch.load(out, weights_only=True)
        assert saved["hook"] == case.hook and saved["k"] == int(argv[argv.index("--k") + 1])
        assert tuple(saved["sae"]["W_enc"].shape) == case.shape
        return
    assert code == 2, (argv, code, err)
    assert lines and lines[-1].startswith("train_sae: error: "), err
    # ours: one line; argparse: usage, then one
    assert len(lines) == 1 or lines[0].startswith("usage: "), err
    assert re.search(case.error, lines[-1]), (case.error, lines[-1])
    assert digest(touched) == before, f"{argv} was refused but changed files"


# --- generated: flags drawn good or bad, over the checkpoint states ----------------------------

GOOD = {
    "--site": ["resid_post:1", "blocks.1.hook_resid_post", "resid_post:0", "z:1"],
    "--k": ["1", "4", "8"],
    "--expansion": ["1", "2", "3"],
    "--batch-size": ["16", "32", "180"],
    "--lr": ["0.003", "0.01"],
    "--seed": ["0", "1"],
    "--steps": ["3", "4"],
}
BAD = {
    "--site": [
        "",
        "resid_post:0-1",
        "resid_post:all",
        "mlp_out:1",
        "pattern:1",
        "resid_post:9",
        "z:1.0",
    ],
    "--k": ["0", "-1", "400"],
    "--expansion": ["0", "-2"],
    "--batch-size": ["0", "-4", "181", "4096"],
    "--lr": ["0", "-1", "nan", "inf"],
    "--steps": ["0", "-1"],
}
HOOKS = {
    "resid_post:1": "blocks.1.hook_resid_post",
    "blocks.1.hook_resid_post": "blocks.1.hook_resid_post",
    "resid_post:0": "blocks.0.hook_resid_post",
    "z:1": "blocks.1.attn.hook_z",
}
OUTCOMES: Counter = Counter()


@st.composite
def command_lines(draw) -> tuple[dict[str, str], set[str], str, str]:
    """(flag values, the flags given a bad value, the store, the checkpoint's state)."""
    bad = set(
        draw(st.lists(st.sampled_from(sorted(BAD)), max_size=2, unique=True))
        if draw(st.integers(0, 2)) == 0
        else []
    )
    values = dict(zip(BASE[0:12:2], BASE[1:12:2]), **{"--steps": "3"})
    for flag in GOOD:
        if flag in bad:
            values[flag] = draw(st.sampled_from(BAD[flag]))
        elif draw(st.integers(0, 2)) == 0:
            values[flag] = draw(st.sampled_from(GOOD[flag]))
    return (
        values,
        bad,
        draw(st.sampled_from(["a", "a", "b"])),
        draw(st.sampled_from(["none", "base", "base", "garbage", "old"])),
    )


def _resumable(values: dict[str, str], store: str) -> bool:
    """Whether these flags continue the base checkpoint (its site, k, ... and store a)."""
    same = all(values[f] == v for f, v in zip(BASE[2:12:2], BASE[3:12:2]))
    site = HOOKS[values["--site"]]
    return (
        same and site == "blocks.1.hook_resid_post" and store == "a" and int(values["--steps"]) >= 3
    )


@settings(
    deadline=None,
    derandomize=True,
    max_examples=int(os.environ.get("ACTSTORE_FUZZ_EXAMPLES", "30")),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(line=command_lines())
def test_generated_command_lines(line, world: Path, tmp_path_factory, train_sae) -> None:
    values, bad, store, state = line
    d = tmp_path_factory.mktemp("gen")
    ck, out = d / "ck.pt", d / "sae.pt"
    if state == "base":
        shutil.copy(world / "base.pt", ck)
    elif state == "old":
        torch.save(without_config(torch.load(world / "base.pt", weights_only=True)), ck)
    elif state == "garbage":
        ck.write_bytes(GARBAGE["bytes"])
    argv = [
        str(world / f"{store}.zarr"),
        "--device",
        "cpu",
        "--log-every",
        "100",
        "--checkpoint",
        str(ck),
        "--out",
        str(out),
    ] + [x for kv in values.items() for x in kv]
    ok = (
        not bad
        and (int(values["--k"]) <= int(values["--expansion"]) * 128)
        and (state == "none" or state == "base" and _resumable(values, store))
    )
    before = digest([world / "a.zarr", world / "b.zarr", d])
    code, err = run(train_sae, argv)
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    if ok:
        assert code == 0, (argv, err)
        saved = torch.load(out, weights_only=True)
        # every site of these stores has 128 features per token
        d_sae = int(values["--expansion"]) * 128
        assert saved["hook"] == HOOKS[values["--site"]] and saved["k"] == int(values["--k"])
        assert tuple(saved["sae"]["W_enc"].shape) == (128, d_sae)
        OUTCOMES["trained"] += 1
    else:
        assert code == 2 and lines and lines[-1].startswith("train_sae: error: "), (argv, code, err)
        assert len(lines) == 1 or lines[0].startswith("usage: "), err
        assert digest([world / "a.zarr", world / "b.zarr", d]) == before, (
            f"{argv} was refused but changed files"
        )
        OUTCOMES["usage error" if lines[0].startswith("usage: ") else "error of ours"] += 1


def test_the_generator_reaches_every_outcome() -> None:
    """Runs after the one above (file order): it trained, and met both kinds of error."""
    print(dict(OUTCOMES))
    assert set(OUTCOMES) == {"trained", "usage error", "error of ours"}, OUTCOMES
