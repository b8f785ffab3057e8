"""The bad-input matrix of `cache`, generated: hypothesis draws command lines over the
flags' types, ranges and combinations (seq-len, n-rows/n-tokens, rows per shard and
chunk, codecs, site specs, dtypes, batch sizes, devices, packing, splits, corpora
including broken files, outputs that exist, are stores, or lie inside one).

The invariant, for every command line: the outcome is either a clear error (exit 2,
one line ``actstore: error: ...``, or argparse's usage error; never a traceback) or
a complete store that verifies and holds what was asked (its first row equal to
``run_with_cache``); and no byte of an existing store, folder or corpus file changes.

The outcome counts are printed at the end (pytest -s) and, with
``ACTSTORE_FUZZ_REPORT=<file>``, written there as JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actstore
from actstore.cli import main
from actstore.store import verify_store

from ..conftest import DOCS

OUTCOMES: Counter[str] = Counter()
FAST = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model):
    d = tmp_path_factory.mktemp("fuzz")
    docs = [doc for doc in DOCS if doc]
    (d / "good.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    (d / "good.txt").write_text("\n".join(t.replace("\n", " ") for t in docs) + "\n")
    (d / "nulls.jsonl").write_text(
        '{"text": "a b c d e f g"}\n{"text": null}\n{"text": "h i j k"}\n'
    )
    (d / "broken.jsonl").write_text('{"text": "a b c d e f g"}\n{"text": "h i\n')
    (d / "ints.jsonl").write_text('{"text": 1}\n{"text": 2}\n')
    (d / "empty.jsonl").write_text("")
    (d / "latin1.txt").write_bytes("café au lait, crème brûlée\n".encode("latin-1"))
    (d / "notastore").mkdir()
    (d / "notastore" / "thesis.tex").write_text("years of work")
    notok = d / "notok-model"
    notok.mkdir()
    for name in os.listdir(tiny_model):
        if "token" not in name and "vocab" not in name and "merges" not in name:
            shutil.copy(os.path.join(tiny_model, name), notok / name)
    actstore.cache(
        out=str(d / "existing.zarr"),
        model=tiny_model,
        dataset=str(d / "good.jsonl"),
        seq_len=8,
        n_rows=6,
        sites="resid_post:0",
        rows_per_shard=4,
        progress=False,
    )
    yield d
    report = dict(sorted(OUTCOMES.items()))
    print(f"\ncache fuzz outcomes ({sum(OUTCOMES.values())} command lines): {report}")
    if os.environ.get("ACTSTORE_FUZZ_REPORT"):
        Path(os.environ["ACTSTORE_FUZZ_REPORT"]).write_text(json.dumps(report, indent=2))


def _tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _protected(d: Path) -> dict[str, str]:
    """What no command may change: the existing store, the folder that is not a
    store, and the corpus files."""
    out = {name: _tree_hash(d / name) for name in ("existing.zarr", "notastore")}
    out.update(
        {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir() if p.is_file()}
    )
    return out


SITES = [
    "resid_post:all",
    "resid_post:0",
    "z:1",
    "pattern:2.0",
    "pattern:0.1,1.3",
    "mlp_out:0-1",
    "resid_pre:2",
    "attn_out:all",
    "blocks.0.hook_resid_mid",
    "resid_post:9",
    "pattern:1.9",
    "residpost:all",
    "z:",
    ":",
    "resid_post:0,resid_post:0",
    "loss",
    "",
]
CODECS = [
    "none",
    "zstd",
    "zstd:3",
    "zstd:-5",
    "zstd:99",
    "blosc-lz4",
    "blosc-lz4:12",
    "blosc-zstd:5",
    "blosc-zstd:50",
    "blosc-zstd-bitshuffle",
    "zstd:x",
    "gzip",
    "",
    "zstd:",
    "none:3",
]
DEVICES = ["cpu", "auto", "tpu", "cuda:7", "meta", "", "cpu:0"]
DATASETS = [
    "good.jsonl",
    "good.txt",
    "nulls.jsonl",
    "broken.jsonl",
    "ints.jsonl",
    "empty.jsonl",
    "latin1.txt",
    "missing.jsonl",
    "actstore-demo",
    "repeated-random:5",
    "repeated-random:0",
    "*.jsonl",
]
OUTS = [
    "new",
    "new",
    "new",
    "existing.zarr",
    "existing.zarr/results/inner.zarr",
    "notastore",
    "good.txt/x.zarr",
]
MODELS = ["tiny", "tiny", "tiny", "tiny", "missing-model", "notok-model", "actstore-demo"]

ints = st.integers(min_value=-2, max_value=40)
maybe = lambda s: st.none() | s  # noqa: E731 - a flag that is left out or given
# values argparse itself refuses (a usage error before anything else is checked): one
# in eight command lines gets one, so that most reach actstore's own checks
USAGE_BREAKERS = [
    ("--seq-len", "abc"),
    ("--n-rows", "1.5"),
    ("--batch-size", ""),
    ("--rows-per-shard", "1e3"),
    ("--rows-per-chunk", "0x10"),
    ("--dtype", "float64"),
    ("--storage-dtype", "int8"),
    ("--packing", "none"),
    ("--write-threads", "-0.5"),
]


@st.composite
def command_lines(draw, valid: bool):
    """A `cache` command line, its flags drawn independently (valid=True: only
    values that are meant to work, so the stores themselves are checked)."""
    opts: list[tuple[str, str | None]] = []
    if valid:
        out, model = "new", "tiny"
        dataset = draw(
            st.sampled_from(["good.jsonl", "good.txt", "actstore-demo", "repeated-random:5"])
        )
        sites = draw(st.sampled_from(SITES[:8]))
        seq = draw(st.integers(2, 32)) if not dataset.startswith("repeated") else 11
        opts += [("--seq-len", str(seq)), ("--n-rows", str(draw(st.integers(1, 12))))]
        for flag in ("--rows-per-shard", "--rows-per-chunk", "--batch-size"):
            v = draw(maybe(st.integers(1, 9)))
            if v is not None and not (
                flag == "--rows-per-chunk" and "--rows-per-shard" in dict(opts)
            ):
                opts.append((flag, str(v)))
        opts += [
            ("--codec", draw(st.sampled_from(["none", "zstd:3", "blosc-lz4", "zstd:-5"]))),
            ("--device", "cpu"),
        ]
        if not dataset.startswith("repeated"):  # synthetic rows are whole rows: no document packing
            opts.append(("--packing", draw(st.sampled_from(["pack", "document"]))))
    else:
        out, model = draw(st.sampled_from(OUTS)), draw(st.sampled_from(MODELS))
        dataset = draw(st.sampled_from(DATASETS))
        sites = draw(st.sampled_from(SITES))
        for flag in (
            "--seq-len",
            "--n-rows",
            "--n-tokens",
            "--rows-per-shard",
            "--rows-per-chunk",
            "--batch-size",
            "--write-threads",
        ):
            v = draw(maybe(ints.map(str)))
            # exclusive: once is enough
            if v is not None and not (flag == "--n-tokens" and "--n-rows" in dict(opts)):
                opts.append((flag, v))
        for flag, values in (
            ("--codec", CODECS),
            ("--device", DEVICES),
            ("--dtype", ["float32", "float32", "bfloat16"]),
            ("--storage-dtype", ["float16", "float32"]),
            ("--split", ["train", "validation"]),
            ("--packing", ["pack", "document"]),
            ("--text-field", ["text", "body"]),
        ):
            v = draw(maybe(st.sampled_from(values)))
            if v is not None:
                opts.append((flag, v))
        for switch in ("--resume", "--no-fsync", "--no-disk-check"):
            if draw(st.booleans()):
                opts.append((switch, None))
        # one in eight (hypothesis favours the ends of ranges)
        if 400 <= draw(st.integers(0, 999)) < 525:
            opts.append(draw(st.sampled_from(USAGE_BREAKERS)))
    return out, model, dataset, sites, opts


def _argv(world: Path, tiny_model: str, line) -> tuple[list[str], Path]:
    out, model, dataset, sites, opts = line
    target = Path(tempfile.mkdtemp(dir=world / "outs")) / "s.zarr" if out == "new" else world / out
    model_arg = (
        tiny_model if model == "tiny" else model if model == "actstore-demo" else str(world / model)
    )
    data_arg = (
        dataset
        if dataset.startswith(("actstore-demo", "repeated-random"))
        else str(world / dataset)
    )
    argv = [
        "cache",
        str(target),
        "--model",
        model_arg,
        "--dataset",
        data_arg,
        "--sites",
        sites,
        "--quiet",
    ]
    for flag, v in opts:
        # '=' so that values such as -2 stay values
        argv += [flag] if v is None else [f"{flag}={v}"]
    return argv, target


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 2
    return code, err.getvalue()


def _check_store(path: Path, argv: list[str], bridge) -> None:
    store = actstore.open(path)
    flags = dict(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    assert store.is_complete and verify_store(str(path), progress=False) == []
    if "--n-rows" in flags:
        assert store.n_rows == int(flags["--n-rows"])
    if "--rows-per-shard" in flags:
        assert store.layout.rows_per_shard == int(flags["--rows-per-shard"])
    assert store.layout.rows_per_shard % store.layout.rows_per_chunk == 0
    if bridge is None or store.meta.model.dtype != "float32":
        return
    _, ref = bridge.run_with_cache(torch.from_numpy(store.tokens(rows=slice(0, 1))).long())
    for site in store.meta.sites:
        if site.hook not in ref:  # derived sites (loss) have no hook of their own
            continue
        want = ref[site.hook].float().cpu()
        if site.heads is not None:
            want = want.index_select(1 if "pattern" in site.hook else 2, torch.tensor(site.heads))
        got = torch.from_numpy(store.acts(site.hook, rows=slice(0, 1))).float()
        torch.testing.assert_close(
            got, want, rtol=1e-3 if store.meta.storage_dtype == "float16" else 1e-5, atol=1e-3
        )


def _one(world: Path, tiny_model: str, line, bridge, kind: str) -> None:
    (world / "outs").mkdir(exist_ok=True)
    argv, target = _argv(world, tiny_model, line)
    before = _protected(world)
    code, err = _run(argv)
    assert "Traceback" not in err, err
    assert _protected(world) == before, f"{argv} changed an existing store, folder or corpus file"
    lines = err.strip().splitlines()
    assert code == 0 or kind != "valid", f"{argv} is meant to work: {err}"
    if code == 0:
        _check_store(target, argv, bridge if line[1] == "tiny" else None)
        OUTCOMES[f"{kind}: store written and verified"] += 1
    elif lines and lines[-1].startswith("actstore cache: error:"):
        assert code == 2 and lines[0].startswith("usage:"), err
        OUTCOMES[f"{kind}: usage error (argparse)"] += 1
    else:
        assert code == 2 and len(lines) >= 1 and lines[0].startswith("actstore: error: "), (
            argv,
            code,
            err,
        )
        # one line, but a resume refused for other options lists them, one per line
        assert len(lines) == 1 or "cannot be resumed" in lines[0], err
        OUTCOMES[f"{kind}: actstore error"] += 1
        assert not (target.exists() and line[0] == "new" and os.listdir(target)), (
            f"{argv} left {target}"
        )


@settings(FAST, max_examples=int(os.environ.get("ACTSTORE_FUZZ_EXAMPLES", "40")))
@given(line=command_lines(valid=False))
def test_any_command_line_is_a_clear_error_or_a_verified_store(world, tiny_model, bridge, line):
    _one(world, tiny_model, line, bridge, "any")


@settings(FAST, max_examples=int(os.environ.get("ACTSTORE_FUZZ_VALID_EXAMPLES", "10")))
@given(line=command_lines(valid=True))
def test_valid_command_lines_write_stores_equal_to_the_model(world, tiny_model, bridge, line):
    _one(world, tiny_model, line, bridge, "valid")


def test_the_generator_reaches_every_kind_of_outcome(world):
    """Runs after the two above (file order): the broad generator reached the engine's
    own checks, the valid one wrote stores."""
    assert (
        OUTCOMES["any: actstore error"] > 0 and OUTCOMES["valid: store written and verified"] > 0
    ), OUTCOMES
