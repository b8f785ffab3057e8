"""The bad-input matrix: every command against each class of wrong argument. Each
gives a specific message and a non-zero exit, and no traceback unless --debug."""

import subprocess
import sys

import pytest

import actstore
from actstore.cli import main

from ..conftest import DOCS, TINY


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model):
    d = tmp_path_factory.mktemp("matrix")
    (d / "latin1.txt").write_bytes("café au lait\n".encode("latin-1"))
    (d / "empty.jsonl").write_text("")
    (d / "notastore").mkdir()
    (d / "notastore" / "thesis.tex").write_text("years of work")
    (d / "nulls.jsonl").write_text(
        '{"text": "a b c d e f g h i j k l m n o p q"}\n{"text": null}\n'
    )
    (d / "broken.jsonl").write_text(
        '{"text": "a b c d e f g h i j k l m n o p q"}\n{"text": "abc"\n'
    )
    (d / "doc.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20 + "\n")
    (d / "pairs_bad.jsonl").write_text(
        '{"clean": "When Mary and John", "corrupted": "When Mary", "answer": " Mary", "wrong": " John"}\n'
    )
    (d / "pairs_same.jsonl").write_text(
        '{"clean": "When Mary and John went", "corrupted": "When John and Mary went", '
        '"answer": " Mary", "wrong": " Mary"}\n'
    )
    (d / "pairs_nochange.jsonl").write_text(
        '{"clean": "When Mary and John went", "corrupted": "When Mary and John went", '
        '"answer": " Mary", "wrong": " John"}\n'
    )
    import numpy as np

    inf = np.random.default_rng(0).normal(size=(4, 16))
    inf[2, 3] = np.inf
    np.save(d / "inf.npy", inf)
    np.save(d / "nan.npy", np.full((4, 16), np.nan))
    (d / "text.npy").write_text("not numpy")
    (d / "afile").write_text("a file")
    (d / "pairs_multi.jsonl").write_text(
        '{"clean": "When Mary and John went", "corrupted": "When John and Mary went", '
        '"answer": " Mary Smith", "wrong": " John"}\n'
    )
    actstore.cache(
        out=str(d / "text.zarr"),
        model=tiny_model,
        dataset=DOCS,
        seq_len=16,
        n_rows=4,
        sites="resid_post:all,z:all,mlp_out:all",
        progress=False,
    )
    from actstore.demo import build_random_gpt2

    build_random_gpt2(d / "other-model", seed=9, **TINY)
    return d


# (argv with {m}: the tiny model, {d}: the folder above) -> stderr must match
CASES = [
    # cache
    (
        "cache {d}/o.zarr --model {d}/missing --dataset x.jsonl",
        r"Model folder .*missing' not found",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset {d}/nope.jsonl --seq-len 16",
        r"Dataset file .*nope.jsonl' not found",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset {d}/empty.jsonl --seq-len 16",
        r"are empty; pass files with text",
    ),
    ("cache {d}/o.zarr --model {m} --dataset {d}/latin1.txt --seq-len 16", r"is not UTF-8 text"),
    (
        "cache {d}/o.zarr --model {m} --dataset actstore-demo --seq-len 1000000000",
        r"beyond the model's context of 64",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset actstore-demo --seq-len 16 --sites resid_post:9",
        r"layer 9 is out of range; this model has layers 0..2",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset actstore-demo --seq-len 16 --sites pattern:1.9",
        r"head 9 is out of range; this model has heads 0..3",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset actstore-demo --seq-len 16 --sites residpost:all",
        r"Unknown site 'residpost'.*resid_post",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset actstore-demo --seq-len 16 --n-rows 0",
        r"n_rows must be a positive integer",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset actstore-demo --seq-len abc",
        r"argument --seq-len: invalid int value: 'abc'",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset repeated-random:5 --seq-len 12 --n-rows 2",
        r"pass --seq-len 11",
    ),
    (
        "cache {d}/text.zarr --model {m} --dataset actstore-demo --seq-len 16",
        r"already exists \(4 of 4 rows done\)",
    ),
    (
        "cache {d}/text.zarr --model {d}/other-model --dataset actstore-demo --seq-len 16 --n-rows 4 --resume "
        "--sites resid_post:all,z:all,mlp_out:all",
        r"another model, corpus or config",
    ),
    (
        "cache {d}/notastore --model {m} --dataset actstore-demo --seq-len 16 --overwrite",
        r"not an actstore store; refusing",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset {d}/nulls.jsonl --seq-len 4",
        r"nulls.jsonl', line 2: field 'text' holds no value",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset {d}/broken.jsonl --seq-len 4",
        r"broken.jsonl', line 2: Expecting ','",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset {d}/doc.txt --seq-len 4 --split validation",
        r"one split, so --split validation",
    ),
    (
        "cache {d}/text.zarr/results/inner.zarr --model {m} --dataset {d}/doc.txt --seq-len 4",
        r"is inside the store",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset {d}/doc.txt --seq-len 4 --codec zstd:99",
        r"level 99 is outside zstd's",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset {d}/doc.txt --seq-len 4 --codec blosc-zstd:50",
        r"level 50 is outside",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset {d}/doc.txt --seq-len 4 --device tpu",
        r"Unknown device 'tpu'; pass auto",
    ),
    (
        "cache {d}/o.zarr --model {m} --dataset repeated-random:5 --packing document",
        r"--packing document does not apply",
    ),
    # info, verify
    ("info {d}/missing.zarr", r"No store at '.*missing.zarr'"),
    (
        "info {d}/notastore",
        r"notastore. is a folder but not an actstore store \(it holds thesis.tex",
    ),
    ("verify {d}/missing.zarr", r"No store at"),
    # analyze
    ("analyze induction {d}/text.zarr", r"not made from repeated random tokens"),
    ("analyze induction {d}/text.zarr --half-len 3", r"holds no attention patterns"),
    ("analyze logit-lens {d}/text.zarr --rows 9:12", r"outside the store's rows 0..3"),
    ("analyze logit-lens {d}/text.zarr --rows x", r"--rows 'x': expected 'A:B' or 'N'"),
    ("analyze dla {d}/text.zarr --target ' Mary Smith'", r"is 2 tokens"),
    (
        "analyze dla {d}/text.zarr --target ' Mary' --model {d}/other-model",
        r"other weights than the store's",
    ),
    ("analyze dla {d}/missing.zarr --target ' Mary'", r"No store at"),
    (
        "analyze dla {d}/text.zarr --target ' Mary' --wrong ' Mary'",
        r"the same token \(5335\), so every logit difference is 0",
    ),
    ("analyze dla {d}/text.zarr --target ' Mary' --wrong ''", r"'' is 0 tokens"),
    (
        "analyze dla {d}/text.zarr --target ' Mary' --pos 99",
        r"Position 99 is outside the store's rows of 16 tokens",
    ),
    ("analyze logit-lens {d}/text.zarr --k 0", r"at least 1; got 0"),
    ("analyze logit-lens {d}/text.zarr --target ''", r"'' is 0 tokens"),
    (
        "analyze logit-lens {d}/text.zarr --rows -9:-1",
        r"--rows '-9:-1' is outside the store's rows 0..3",
    ),
    (
        "analyze logit-lens {d}/text.zarr --rows 1:2:3",
        r"expected 'A:B' or 'N', counted from the end when negative",
    ),
    # patch
    ("patch --model {m} --pairs {d}/nope.jsonl", r"Pairs file .*nope.jsonl' not found"),
    (
        "patch --model {m} --pairs {d}/pairs_bad.jsonl --quiet",
        r"clean prompt is 5 tokens and the corrupted one 3",
    ),
    (
        "patch --model {m} --pairs {d}/pairs_multi.jsonl --quiet",
        r"answer ' Mary Smith' is 2 tokens",
    ),
    ("patch --model {d}/missing --pairs {d}/pairs_bad.jsonl", r"Model folder .*missing' not found"),
    (
        "patch --model {m} --pairs {d}/pairs_bad.jsonl --sweep nonsense",
        r"argument --sweep: invalid choice: 'nonsense'",
    ),
    (
        "patch --model {m} --pairs {d}/pairs_same.jsonl --quiet",
        r"pairs_same.jsonl:1: answer ' Mary' and wrong ' Mary' are "
        r"the same token",
    ),
    (
        "patch --model {m} --pairs {d}/pairs_nochange.jsonl --quiet",
        r"pairs_nochange.jsonl:1: the clean and corrupted "
        r"prompts are the same tokens",
    ),
    # probe
    ("probe {d}/missing.zarr --target position", r"No store at"),
    ("probe {d}/text.zarr --target bogus --quiet", r"Unknown target 'bogus'"),
    (
        "probe {d}/text.zarr --sites resid_pots:all --target position --quiet",
        r"Unknown site 'resid_pots'",
    ),
    (
        "probe {d}/text.zarr --sites resid_post:9 --target position --quiet",
        r"layer 9 is out of range",
    ),
    (
        "probe {d}/text.zarr --target position --test-frac x",
        r"argument --test-frac: invalid float value: 'x'",
    ),
    (
        "probe {d}/text.zarr --target {d}/inf.npy --quiet --no-save",
        r"Target 'inf' holds 1 infinite value \(first at row 2, "
        r"pos 3\)",
    ),
    (
        "probe {d}/text.zarr --target {d}/nan.npy --quiet --no-save",
        r"Target 'nan' labels no position",
    ),
    (
        "probe {d}/text.zarr --target {d}/text.npy --quiet --no-save",
        r"is not a NumPy .npy array \(it has no .npy header\)",
    ),
    (
        "probe {d}/text.zarr --target position --seed -1 --quiet",
        r"seed must be an integer >= 0; got -1",
    ),
    (
        "probe {d}/text.zarr --target position --name .. --quiet",
        r"Probe name '..' must be non-empty",
    ),
    # tour
    ("tour {d}/afile --quiet", r"afile' is a file; pass a folder"),
]


@pytest.mark.parametrize(
    "argv,message", CASES, ids=[c[0].split(" --")[0].replace("{d}/", "") for c in CASES]
)
def test_bad_input(files, tiny_model, capsys, argv, message):
    import shlex

    args = shlex.split(argv.format(m=tiny_model, d=files))
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    import re

    assert re.search(message, err, re.S), err


def test_traceback_only_with_debug(files):
    argv = [sys.executable, "-m", "actstore", "info", str(files / "missing.zarr")]
    plain = subprocess.run(argv, capture_output=True, text=True)
    assert (
        plain.returncode == 2
        and plain.stderr.startswith("actstore: error: No store at")
        and "Traceback" not in plain.stderr
    )
    debug = subprocess.run(argv[:3] + ["--debug"] + argv[3:], capture_output=True, text=True)
    assert (
        debug.returncode == 1
        and "Traceback" in debug.stderr
        and "StoreNotFoundError" in debug.stderr
    )
