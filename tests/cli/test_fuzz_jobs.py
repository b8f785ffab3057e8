"""The job part of the bad-input matrix, generated: property-based tests (hypothesis)
over the arguments of `probe`, `patch` and `analyze` (induction, logit-lens, dla).

The invariant, for every generated command line:

- the outcome is a clear error (exit 2: one line ``actstore: error: ...`` of ours, or
  argparse's usage error), or a result that passes the checks below; never a traceback,
  never a NaN in a result (null only where documented: a site not stored, a position
  without a next token), never a RuntimeWarning of NaN arithmetic;
- an existing store keeps every byte, unless the command succeeds and writes its result
  there, and then only under results/.

One tiny store of text and one of repeated random tokens are built once; commands run
in-process. The outcome counts are printed at the end (and written to the JSON file
named by $ACTSTORE_FUZZ_REPORT, if set): the README quotes them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shlex
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import actstore
from actstore.cli import main

from ..conftest import DOCS, needs_tl4

N_ROWS, SEQ, HALF = 6, 16, 4
RUNS = itertools.count()
OUTCOMES: dict[str, Counter] = {}
MESSAGES: dict[str, Counter] = defaultdict(Counter)  # the errors met, by the start of their message
SETTINGS = dict(
    deadline=None,
    derandomize=True,
    phases=(Phase.explicit, Phase.generate),  # no shrinking: slow here
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_NAN_WARNING = re.compile(
    r"invalid value|divide by zero|Mean of empty slice|All-NaN|Degrees of freedom"
)


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_model):
    """text: padded rows (document packing), z of layer 1 only; rep: repeated random tokens."""
    d = tmp_path_factory.mktemp("fuzz")
    text = actstore.cache(
        out=str(d / "text.zarr"),
        model=tiny_model,
        dataset=DOCS[:10],
        packing="document",
        seq_len=SEQ,
        n_rows=N_ROWS,
        sites="resid_pre:0,resid_post:all,z:1,mlp_out:all",
        progress=False,
    )
    rep = actstore.cache(
        out=str(d / "rep.zarr"),
        model=tiny_model,
        dataset=f"repeated-random:{HALF}",
        seq_len=2 * HALF + 1,
        n_rows=4,
        sites="pattern:all",
        progress=False,
    )
    return {"text": text, "rep": rep, "dir": d}


def digest(path: str) -> dict[str, str]:
    """sha256 of every file of a store, by relative path."""
    root = Path(path)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run(command: str, argv: list[str], capsys, stores_touched: list[str]) -> tuple[str, str]:
    """Run ``actstore argv``; check the error invariants; return (outcome, stdout)."""
    before = {s: digest(s) for s in stores_touched}
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
            assert code == 2, (argv, code)
            err = capsys.readouterr().err
            assert re.search(r"^actstore.*: error: ", err.splitlines()[-1]), err
            outcome = "usage"
            out = ""
        else:
            out, err = capsys.readouterr()
            assert "Traceback" not in err
            if code == 2:
                assert err.startswith("actstore: error: ") and err.count("\n") == 1, err
                outcome = "error"
                MESSAGES[command][re.sub(r"'[^']*'|\d+", "_", err[17:])[:70]] += 1
            else:
                assert code == 0, (argv, code, err)
                outcome = "ok"
    bad = [
        str(w.message)
        for w in caught
        if issubclass(w.category, RuntimeWarning) and _NAN_WARNING.search(str(w.message))
    ]
    assert not bad, (shlex.join(argv), bad)
    for s in stores_touched:
        after = digest(s)
        if outcome != "ok":
            assert after == before[s], f"{shlex.join(argv)} failed but changed {s}"
        else:
            changed = {k for k in set(after) | set(before[s]) if after.get(k) != before[s].get(k)}
            assert all(k.startswith("results/") for k in changed), (
                shlex.join(argv),
                sorted(changed)[:5],
            )
    OUTCOMES.setdefault(command, Counter())[outcome] += 1
    return outcome, out


def strict_json(text: str) -> dict:
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON output"))


# --- probe -------------------------------------------------------------------------------


def flags(draw, table: dict[str, tuple[list[str], list[str]]], bad: set[str]) -> list[str]:
    """Options of ``table`` ({flag: (good values, bad values)}): a bad value for the flags
    in ``bad``, else now and then a good one."""
    argv = []
    for flag, (good, wrong) in table.items():
        if flag in bad:
            argv += [flag, draw(st.sampled_from(wrong))]
        elif good and draw(st.integers(0, 3)) == 0:
            argv += [flag, draw(st.sampled_from(good))]
    return argv


def faults(draw, names: list[str]) -> set[str]:
    """Which arguments get a bad value: none about half the time, else one to three."""
    n = draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))
    return set(draw(st.lists(st.sampled_from(names), min_size=n, max_size=n, unique=True)))


def label_file(draw, folder: Path, i: int, bad: bool) -> str:
    """A target: a built-in name, or a file of labels; one of the wrong kinds if ``bad``."""
    kind = draw(
        st.sampled_from(
            ["text", "pickle", "missing", "suffix", "npy", "npy", "bogus"]
            if bad
            else ["builtin", "npy"]
        )
    )
    if kind in ("builtin", "bogus"):
        return (
            "bogus"
            if bad
            else draw(st.sampled_from(["position", "doc_pos", "token", "next_token", "doc"]))
        )
    path = folder / f"t{i}.npy"
    if kind == "text":
        path.write_bytes(draw(st.binary(max_size=40)))
    elif kind == "pickle":
        np.save(path, np.array([[{"a": 1}] * SEQ] * N_ROWS, dtype=object), allow_pickle=True)
    elif kind == "missing":
        return str(folder / "none" / "t.npy")
    elif kind == "suffix":
        path = folder / f"t{i}.csv"
        path.write_text("1,2,3")
    else:
        good_dtypes = ["float64", "float32", "float16", "int64", "int32", "uint8"]
        dtype = draw(
            st.sampled_from(good_dtypes + (["bool", "uint64", "complex64", "<U2"] if bad else []))
        )
        shape = (
            (N_ROWS, SEQ)
            if not bad or draw(st.booleans())
            else draw(st.sampled_from([(N_ROWS, SEQ - 1), (SEQ,), (N_ROWS, SEQ, 1), ()]))
        )
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        values = (
            np.round(rng.normal(size=shape) * 3)
            if dtype != "float64" or draw(st.booleans())
            else rng.normal(size=shape)
        )
        flat = values.reshape(-1)
        special = draw(
            st.sampled_from(
                ["nan", "inf", "-inf", "all-nan", "constant", "negative"]
                if bad
                else [None, None, "some-nan"]
            )
        )
        k = draw(st.integers(1, max(1, flat.size // (1 if bad else 4))))
        if special in ("nan", "inf", "-inf", "some-nan") and flat.size:
            flat[rng.choice(flat.size, min(k, flat.size), replace=False)] = float(
                special.replace("some-", "")
            )
        elif special in ("all-nan", "constant", "negative"):
            flat[:] = {"all-nan": np.nan, "constant": 3, "negative": -1}[special]
        if dtype[0] in "iu" or dtype == "bool":
            values = np.where(np.isfinite(values), values, -1 if dtype[0] == "i" else 0)
        with np.errstate(invalid="ignore", over="ignore"):
            np.save(
                path, values.astype(dtype) if dtype != "<U2" else values.astype(str).astype(dtype)
            )
    return str(path)


PROBE_FLAGS = {
    "--sites": (
        [
            "resid_post:all",
            "resid_post:0",
            "resid_pre:0,resid_post:2",
            "blocks.2.hook_resid_post",
            "z:1",
            "mlp_out:all",
        ],
        ["resid_post:9", "resid_pots:all", "pattern:1", "z:1.2", ""],
    ),
    "--kind": ([], ["svm", "logistic", "ridge"]),  # either kind may contradict the target
    "--test-frac": (["0", "0.2", "0.5"], ["1", "-0.1", "nan", "x"]),
    "--seed": (["0", "3"], ["-1", "1.5"]),
    "--max-classes": (["2", "8"], ["0", "-3", "1"]),
    "--C": (["1", "0.01"], ["0", "-1", "inf", "nan"]),
    "--alpha": (["1", "0", "1e9"], ["-1", "inf"]),
    "--max-iter": (["5"], ["0", "-1"]),
    "--tol": (["1e-4"], ["-1", "nan"]),
    "--name": (["a", "b-c", "\u00e9"], ["..", "a/b", "", "__x"]),
    "--num-workers": (["1"], ["0"]),
}


@st.composite
def probe_argv(draw, folder: Path):
    bad = faults(draw, [*PROBE_FLAGS, "target"])
    argv = ["--target", label_file(draw, folder, next(RUNS), "target" in bad)]
    argv += flags(draw, PROBE_FLAGS, bad)
    for flag in ("--keep-bos", "--no-standardize", "--no-save"):
        if draw(st.booleans()):
            argv.append(flag)
    if draw(st.integers(0, 4)) == 0:
        argv += ["--class-weight", "balanced"]
    return argv


@settings(max_examples=30, **SETTINGS)
@given(data=st.data())
def test_probe(stores, capsys, data):
    argv = [
        "probe",
        stores["text"].path,
        *data.draw(probe_argv(stores["dir"])),
        "--quiet",
        "--json",
        "--plot",
        "none",
        "--device",
        "cpu",
    ]
    outcome, out = run("probe", argv, capsys, [stores["text"].path])
    if outcome == "ok":
        for hook, r in strict_json(out).items():
            metric_ok = (lambda v: 0 <= v <= 1) if r["n_classes"] else (lambda v: v <= 1 + 1e-9)
            assert r["n_train"] >= 2 and math.isfinite(r["train"]) and metric_ok(r["train"]), (
                argv,
                hook,
                r,
            )
            test_frac = float(argv[argv.index("--test-frac") + 1]) if "--test-frac" in argv else 0.2
            if test_frac > 0:
                assert r["n_test"] > 0 and math.isfinite(r["test"]) and metric_ok(r["test"]), (
                    argv,
                    hook,
                    r,
                )


# --- analyze -----------------------------------------------------------------------------

ROWS = st.one_of(
    st.none(),
    st.builds(
        lambda a, b, colon: (
            f"{'' if a is None else a}{':' if colon else ''}{'' if b is None or not colon else b}"
        ),
        st.one_of(st.none(), st.integers(-8, 8)),
        st.one_of(st.none(), st.integers(-8, 8)),
        st.booleans(),
    ),
    st.sampled_from(["x", "1:2:3", " 1", "--json", "1.5", "-", "0:99"]),
)


def python_rows(spec: str | None, n: int, default: str | None) -> list[int] | None:
    """What Python's slicing of range(n) gives for the spec (None: not a slice spec)."""
    spec = spec.strip() if spec is not None else default
    if spec is None:
        return list(range(n))
    if re.fullmatch(r"-?\d+", spec):
        return [range(n)[int(spec)]] if -n <= int(spec) < n else None
    m = re.fullmatch(r"(-?\d+)?:(-?\d+)?", spec)
    return list(range(n))[slice(*(int(g) if g else None for g in m.groups()))] if m else None


GOOD_TOKENS, BAD_TOKENS = (
    [" Mary", " John", "Mary", " the"],
    [" Mary Smith", "", "\u00e9t\u00e9\u00e9t\u00e9"],
)


@st.composite
def analyze_argv(draw, which: str):
    bad = faults(
        draw,
        [
            "store",
            "rows",
            *{
                "induction": ["--half-len"],
                "logit-lens": ["--k", "--target"],
                "dla": ["--target", "--wrong", "--pos"],
            }[which],
        ],
    )
    store = (
        ("text" if which == "induction" else "rep")
        if "store" in bad
        else ("rep" if which == "induction" else "text")
    )
    rows = draw(
        ROWS
        if "rows" in bad
        else st.sampled_from([None, "0:2", "1", "-2:", "-1", ":", "2:4", ":-1"])
    )
    argv = draw(st.sampled_from([["--rows", rows], [f"--rows={rows}"]])) if rows is not None else []
    table = {
        "induction": {"--half-len": (["4"], ["3", "0", "-1", "7", "2"])},
        "logit-lens": {
            "--k": (["1", "5"], ["0", "-1", "50258"]),
            "--target": (GOOD_TOKENS, BAD_TOKENS),
        },
        "dla": {
            "--wrong": (GOOD_TOKENS, BAD_TOKENS + [" Mary"]),
            "--pos": (["0", f"-{SEQ}"], [str(p) for p in range(-SEQ - 2, SEQ + 3)]),
        },
    }
    argv += flags(draw, table[which], bad)
    if which == "dla":
        argv += [
            "--target",
            draw(st.sampled_from(BAD_TOKENS if "--target" in bad else GOOD_TOKENS)),
        ]
    if draw(st.booleans()):
        argv.append("--no-save")
    return store, rows, argv


@pytest.mark.parametrize("which", ["induction", "logit-lens", "dla"])
@settings(max_examples=14, **SETTINGS)
@given(data=st.data())
def test_analyze(stores, capsys, which, data, tmp_path):
    name, rows, extra = data.draw(analyze_argv(which))
    store = stores[name]
    argv = ["analyze", which, store.path, *extra, "--json", "--figure", str(tmp_path / "f.png")]
    if which != "induction":
        argv += ["--device", "cpu"]
    outcome, out = run(f"analyze {which}", argv, capsys, [stores["text"].path, stores["rep"].path])
    if outcome != "ok":
        return
    got = strict_json(out)
    want = python_rows(rows, store.n_rows, "0:1" if which == "logit-lens" else None)
    assert got["rows"] == want, (argv, got["rows"], want)
    assert ("--no-save" in extra) == (got["results"] == [])
    if which == "induction":
        assert got["half_len"] == HALF and name == "rep"
        assert all(0 <= v <= 1 for row in got["induction"] for v in row)
    elif which == "logit-lens":
        # (site, pos): null only where the tracked next token does not exist
        probs = got["target_prob_row0"]
        assert all(
            v is not None and 0 <= v <= 1
            for row in probs
            for v in (row if "--target" in extra else row[:-1])
        )
    else:
        heads = np.array(got["heads"], dtype=float)  # null -> nan: layers 0 and 2 have no z
        assert (
            np.isnan(heads[[0, 2]]).all()
            and np.isfinite(heads[1]).all()
            and np.isfinite(got["mlp"]).all()
        )
        mask = store.mask(slice(None))
        assert all(mask[r, p] for r, p in zip(got["rows"], got["positions"]))
        target = extra[extra.index("--target") + 1]
        assert "--wrong" not in extra or extra[extra.index("--wrong") + 1] != target


# --- patch -------------------------------------------------------------------------------

WORDS = [
    " Mary",
    " John",
    " went",
    " to",
    " the",
    " store",
    " gave",
    " a",
    " drink",
    "When",
    " and",
    ",",
]


@st.composite
def pairs_file(draw, folder: Path, i: int, bad: bool) -> tuple[str, list[dict]]:
    """A pairs file of sound records of one length; with bad ones mixed in if ``bad``."""
    n = draw(st.integers(4, 7))
    records, lines = [], []
    for _ in range(draw(st.integers(1, 4))):
        clean = draw(st.lists(st.sampled_from(WORDS), min_size=n, max_size=n))
        corrupted = list(clean)
        j = draw(st.integers(0, n - 1))
        corrupted[j] = draw(st.sampled_from([w for w in WORDS if w != clean[j]]))
        answer = draw(st.sampled_from([" Mary", " John", " store"]))
        rec = {
            "clean": "".join(clean),
            "corrupted": "".join(corrupted),
            "answer": answer,
            "wrong": draw(
                st.sampled_from([w for w in (" John", " Mary", " drink") if w != answer])
            ),
        }
        fault = draw(
            st.sampled_from(
                [
                    None,
                    "missing",
                    "long answer",
                    "number",
                    "shorter",
                    "not object",
                    "bad json",
                    "blank",
                    "empty clean",
                    "same answer",
                    "same prompts",
                    "not utf-8",
                ]
                if bad
                else [None]
            )
        )
        if fault == "missing":
            del rec[draw(st.sampled_from(sorted(rec)))]
        elif fault in ("long answer", "same answer"):
            rec["answer"] = " Mary Smith" if fault == "long answer" else rec["wrong"]
        elif fault == "number":
            rec[draw(st.sampled_from(sorted(rec)))] = 3
        elif fault == "shorter":
            rec["corrupted"] = "".join(corrupted[:-1])
        elif fault in ("empty clean", "same prompts"):
            rec["corrupted"] = rec["clean"] = "" if fault == "empty clean" else rec["clean"]
        line = json.dumps(rec)
        lines.append(
            {
                "not object": json.dumps([rec]),
                "bad json": line[:-1],
                "blank": "   ",
                "not utf-8": line.replace("}", ', "x": "\xff"}'),
            }.get(fault, line)
        )
        if fault not in ("not object", "bad json", "blank", "not utf-8"):
            records.append(rec)
    path = folder / f"pairs{i}.jsonl"
    # a lone 0xff byte
    path.write_bytes(("\n".join(lines) + "\n").encode().replace("\u00ff".encode(), b"\xff"))
    return str(path), records


PATCH_FLAGS = {
    "--batch-pairs": (["1", "2"], ["0", "-1", "x"]),
    "--method": (["exact", "attribution", "both"], ["x"]),
    "--metric": (["normalised", "logit_diff"], ["acc"]),
    "--sweep": (["resid_pre", "attn_head_out_all_pos", "mlp_out"], ["nonsense", ""]),
}


@needs_tl4
@settings(max_examples=16, **SETTINGS)
@given(data=st.data())
def test_patch(stores, tiny_model, bridge, tokenizer, capsys, data, tmp_path):
    i = next(RUNS)  # a fresh output path per example (hypothesis may draw the same integers again)
    bad = faults(data.draw, [*PATCH_FLAGS, "pairs", "store"])
    pairs, records = data.draw(pairs_file(tmp_path, i, "pairs" in bad))
    out = tmp_path / f"out{i}.zarr"
    argv = [
        "patch",
        "--model",
        tiny_model,
        "--pairs",
        pairs,
        "--out",
        str(out),
        "--quiet",
        "--device",
        "cpu",
    ]
    argv += flags(data.draw, PATCH_FLAGS, bad)
    if "store" in bad:  # a store that does not hold the clean prompts
        argv += ["--store", stores["text"].path]
    outcome, _ = run("patch", argv, capsys, [stores["text"].path])
    if outcome != "ok":
        return
    g = (
        actstore.ActivationStore.open(stores["text"].path).group["results"]
        if "--store" in argv
        else None
    )
    import zarr

    g = g if g is not None else zarr.open_group(str(out), mode="r")
    sweep = argv[argv.index("--sweep") + 1] if "--sweep" in argv else "resid_pre"
    res = g[f"patching/{sweep}"]
    for name in ("logit_diff", "normalised", "clean_logit_diff", "corrupted_logit_diff"):
        if name in res:
            assert np.isfinite(res[name][...]).all(), (argv, name)
    # the clean logit differences equal a plain forward of the clean prompts
    tok = lambda t: [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    with torch.no_grad():
        logits = bridge(torch.tensor([tok(r["clean"]) for r in records]))[:, -1]
    want = np.array(
        [
            float(logits[j, tok(r["answer"])[1]] - logits[j, tok(r["wrong"])[1]])
            for j, r in enumerate(records)
        ]
    )
    np.testing.assert_allclose(
        res["clean_logit_diff"][...], want, rtol=1e-4, atol=1e-4 * np.abs(want).max()
    )


def test_outcome_counts():
    """Both sides of the matrix were reached, for every command; the counts, for the README."""
    total = {cmd: dict(c) for cmd, c in sorted(OUTCOMES.items())}
    print("\nfuzzed job commands (outcome counts):", json.dumps(total))
    for cmd, messages in sorted(MESSAGES.items()):
        print(f"  {cmd}: " + "; ".join(f"{n} x {m}" for m, n in messages.most_common()))
    if os.environ.get("ACTSTORE_FUZZ_REPORT"):
        Path(os.environ["ACTSTORE_FUZZ_REPORT"]).write_text(json.dumps(total, indent=2) + "\n")
    for cmd, c in total.items():
        assert c.get("ok", 0) > 0 and c.get("error", 0) + c.get("usage", 0) > 0, (cmd, c)
