"""Damage injection: every kind of object of a store (the root, group and array zarr.json,
the chunk and shard objects of acts, tokens, doc, doc_pos, done, stats, plan and results,
and the lock a killed run leaves) x kinds of damage (delete, truncate to 0, truncate to
half, flip a byte, garble the JSON) x every command that reads a store (info, verify,
verify --repair, probe, analyze logit-lens, and ActivationStore.open + reads), run
in-process through ``actstore.cli.main.main``.

The invariant: every outcome is a clear ActStoreError (exit 2, one line, no traceback) or
a correct result (equal to the undamaged store's); verify never exits 0 on a damaged store;
after verify --repair the store holds the undamaged store's values, or verify says what
is left to do. One object of each kind is damaged (ACTSTORE_DAMAGE=full: every object);
the cheap commands run on every case, the slow ones (model loads) on a fixed sample
(ACTSTORE_DAMAGE=commands or full: on every case).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

from actstore.cli.main import main
from actstore.demo import build_random_gpt2
from actstore.errors import ActStoreError
from actstore.store import ActivationStore

# "commands": every command on each case; "full": and every object
MODE = os.environ.get("ACTSTORE_DAMAGE", "")
FULL = MODE == "full"
EVERY_COMMAND = MODE in ("full", "commands")
SITES = "resid_post:all,z:1,pattern:1.0"
LOCK = "../s.zarr.lock"  # beside the store


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0xFF
    return bytes(b)


def _garble(data: bytes) -> bytes:
    """Valid JSON that says something else: a wrong row count, the attributes gone, or a group for an array."""
    doc = json.loads(data)
    if "shape" in doc:
        doc["shape"] = [doc["shape"][0] + 1, *doc["shape"][1:]] if doc["shape"] else [1]
    elif doc.get("attributes"):
        doc["attributes"] = {}
    elif "node_type" in doc:
        doc["node_type"] = "array"
    else:  # the lock
        doc = {"pid": "not a pid"}
    return json.dumps(doc).encode()


KINDS: dict[str, Callable[[bytes], bytes | None]] = {
    "delete": lambda d: None,
    "truncate-0": lambda d: b"",
    "truncate-half": lambda d: d[: len(d) // 2],
    "flip-byte": _flip,
    "garble-json": _garble,
}


def object_type(rel: str) -> str:
    """The kind of object a file of the store is, e.g. 'array zarr.json: acts', 'chunk: done'."""
    if rel == LOCK:
        return "lock"
    if rel == "zarr.json":
        return "root zarr.json"
    parts = rel.split("/")
    if parts[-1] == "zarr.json":
        node = "/".join(parts[:-1])
        what = {"tokens": "index", "doc": "index", "doc_pos": "index"}.get(node, parts[0])
        if node.startswith("stats/") and node != "stats/partials":
            what = "stats/<hook>"
        elif node == "stats/partials":
            what = "stats/partials"
        kind = json.loads(Path(PRISTINE_FILES[rel]).read_bytes())["node_type"]
        return f"{kind} zarr.json: {what}"
    array = rel.split("/c/")[0] if "/c/" in rel else rel[:-2]
    what = {
        "tokens": "index",
        "doc": "index",
        "doc_pos": "index",
        "stats/partials": "stats/partials",
    }.get(array, "stats/<hook>" if array.startswith("stats/") else array.split("/")[0])
    if what == "acts":
        what = f"acts ({array.split('.')[-1]})"
    return f"chunk: {what}"


PRISTINE_FILES: dict[str, str] = {}  # relative path -> absolute path, filled by the fixture
OUTCOMES: Counter[tuple[str, str]] = Counter()  # (command, outcome)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)  # anything but an ActStoreError propagates: a traceback fails the test
    return rc, out.getvalue(), err.getvalue()


def _read(path: str) -> dict[str, np.ndarray]:
    s = ActivationStore.open(path)
    got = {f"acts/{h}": s.acts(h) for h in s.sites} | {
        "tokens": s.tokens(),
        "doc": s.doc(),
        "doc_pos": s.doc_pos(),
    }
    got |= {"tokens[-1]": s.tokens(-1), "acts/b1[5]": s.acts(s.sites[-1], 5)}
    for h in s.sites:
        if "pattern" not in h:
            m = s.stats(h)
            got |= {
                f"stats/{h}/mean": m.mean,
                f"stats/{h}/M2": m.m2,
                f"stats/{h}/count": np.asarray(m.count),
            }
    return got


def _values(path: Path) -> dict[str, np.ndarray]:
    """Every array of the store by path, and the root metadata."""
    g = zarr.open_group(str(path), mode="r")
    out = {"attrs": np.asarray(json.dumps(dict(g.attrs), sort_keys=True))}
    for p in sorted(path.rglob("zarr.json")):
        node = str(p.parent.relative_to(path))
        if node != "." and json.loads(p.read_bytes())["node_type"] == "array":
            out[node] = np.asarray(g[node][...])
    return out


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in a
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, corpus_file: str) -> dict:
    """One small complete store (2 layers, d_model 64, 4 heads; 12 rows in 3 shards of 2
    chunks), a logit-lens result in it, a stale lock of a killed run beside it, and the
    output of every command on it."""
    base = tmp_path_factory.mktemp("damage")
    model = str(
        build_random_gpt2(base / "model", seed=1, n_layer=2, n_embd=64, n_head=4, n_positions=64)
    )
    store = base / "s.zarr"
    assert (
        _run(
            [
                "cache",
                str(store),
                "--model",
                model,
                "--dataset",
                corpus_file,
                "--sites",
                SITES,
                "--seq-len",
                "16",
                "--n-rows",
                "12",
                "--batch-size",
                "4",
                "--rows-per-chunk",
                "2",
                "--rows-per-shard",
                "4",
                "--dtype",
                "float32",
                "--device",
                "cpu",
                "--quiet",
            ]
        )[0]
        == 0
    )
    assert (
        _run(
            [
                "analyze",
                "logit-lens",
                str(store),
                "--rows",
                "0:2",
                "--device",
                "cpu",
                "--json",
                "--figure",
                str(base / "ll.png"),
            ]
        )[0]
        == 0
    )
    PRISTINE_FILES.update(
        {str(p.relative_to(store)): str(p) for p in sorted(store.rglob("*")) if p.is_file()}
    )
    pristine = {
        "path": store,
        "values": _values(store),
        "read": _read(str(store)),
        "out": {
            name: _run(argv(str(store), base))[1]
            .replace(str(store), "STORE")
            .replace(str(base), "DIR")
            for name, argv in SLOW.items()
        }
        | {"info": _run(["info", str(store)])[1].replace(str(store), "STORE")},
    }
    # after the jobs, which write results: they take it over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (base / "s.zarr.lock").write_text(
        json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"})
    )
    PRISTINE_FILES[LOCK] = str(base / "s.zarr.lock")
    return pristine


SLOW: dict[str, Callable[[str, Path], list[str]]] = {
    "probe": lambda s, d: [
        "probe",
        s,
        "--sites",
        "resid_post:1",
        "--target",
        "position",
        "--quiet",
        "--no-save",
        "--plot",
        "none",
        "--json",
        "--device",
        "cpu",
    ],
    "logit-lens": lambda s, d: [
        "analyze",
        "logit-lens",
        s,
        "--rows",
        "0:2",
        "--device",
        "cpu",
        "--json",
        "--figure",
        str(d / "ll.png"),
    ],
}


TYPES = [
    f"{kind} zarr.json: {what}"
    for kind, whats in (
        ("group", ("acts", "stats", "stats/<hook>", "results")),
        ("array", ("index", "acts", "done", "plan", "stats/partials", "stats/<hook>", "results")),
    )
    for what in whats
]
TYPES = [
    "root zarr.json",
    *TYPES,
    *(
        f"chunk: {w}"
        for w in (
            "index",
            "acts (hook_resid_post)",
            "acts (hook_z)",
            "acts (hook_pattern)",
            "done",
            "plan",
            "stats/partials",
            "stats/<hook>",
            "results",
        )
    ),
    "lock",
]
CASES = [
    (t, k) for t in TYPES for k in KINDS if k != "garble-json" or "zarr.json" in t or t == "lock"
]


def _commands(i: int, type_: str) -> list[str]:
    """The cheap commands always; the slow ones on every case with ACTSTORE_DAMAGE=full, else on a
    fixed sample (verify --repair always where the lock is damaged: the lock is only taken to write)."""
    sample = {0: "verify --repair", 2: "probe", 5: "logit-lens", 7: "probe"}
    slow = ["verify --repair", *SLOW] if EVERY_COMMAND else [sample.get(i % 10, "")]
    if type_ == "lock" and "verify --repair" not in slow:
        slow.append("verify --repair")
    return ["info", "verify", "read", *(c for c in slow if c)]


def _objects(type_: str) -> list[str]:
    rels = sorted(rel for rel in PRISTINE_FILES if object_type(rel) == type_)
    assert rels, f"the store has no object of type {type_}"
    return rels if FULL else [rels[len(rels) // 2]]


def _assert_clear(message: str) -> None:
    """One line that names the fix."""
    assert "\n" not in message.strip(), message
    assert any(
        w in message for w in ("verify", "--resume", "rerun", "delete", "restore", "lock")
    ), message


def _outcome(command: str, rc: int, out: str, err: str, path: Path, ref: dict) -> str:
    """'error' (a one-line ActStoreError), 'correct' (as undamaged), 'reported' (verify or info says
    what is wrong and what to do) or 'repaired' (verify --repair made the undamaged store); else fails."""
    if rc == 2:
        lines = err.strip().splitlines()
        assert lines[-1].startswith("actstore: error: ") and "Traceback" not in err, err
        _assert_clear(lines[-1])
        return "error"
    if command == "verify":
        assert rc == 1, out  # never 0 on a damaged (or, with a lock left, unfinished) store
        return "reported"
    if command == "verify --repair":
        if rc == 0:
            assert _same(_values(path), ref["values"]), (
                "verify --repair exit 0, but the store differs from the undamaged one"
            )
            return "repaired"
        assert rc == 1 and ("left" in out or "incomplete" in out), out
        return "reported"
    assert rc == 0, (rc, out, err)
    text = (
        out.replace(str(path), "STORE")
        .replace(str(ref["path"]), "STORE")
        .replace(str(path.parent), "DIR")
    )
    if command == "info" and text != ref["out"]["info"]:
        assert "incomplete: finish it with `actstore verify" in text, text
        return "reported"
    assert text == ref["out"][command], f"{command} gave a different result on a damaged store"
    return "correct"


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{t}-{k}" for t, k in CASES])
def test_damage_gives_a_clear_error_or_a_correct_result(
    pristine: dict, tmp_path: Path, i: int
) -> None:
    type_, kind = CASES[i]
    for n, rel in enumerate(_objects(type_)):
        for command in _commands(i, type_):
            case = tmp_path / f"{n}-{command.replace(' ', '')}"
            store = case / "s.zarr"
            shutil.copytree(pristine["path"], store)
            target = (store / rel).resolve()
            if type_ == "lock":  # the lock a killed run leaves, beside a store it did not finish
                shutil.copy(PRISTINE_FILES[LOCK], target)
                (store / "done/c/2").unlink()
            data = KINDS[kind](Path(PRISTINE_FILES[rel]).read_bytes())
            if data is None:
                target.unlink()
            else:
                target.write_bytes(data)
            if command == "read":
                try:
                    got = _read(str(store))
                except ActStoreError as e:
                    _assert_clear(str(e))
                    OUTCOMES[command, "error"] += 1
                    continue
                assert _same(got, pristine["read"]), "reading a damaged store gave other values"
                OUTCOMES[command, "correct"] += 1
                continue
            argv = {
                "info": ["info", str(store)],
                "verify": ["verify", str(store)],
                "verify --repair": ["verify", str(store), "--repair", "--device", "cpu"],
            }.get(command)
            rc, out, err = _run(argv or SLOW[command](str(store), case))
            OUTCOMES[command, _outcome(command, rc, out, err, store, pristine)] += 1


def test_zz_outcome_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """The matrix's outcomes by command (run after it; printed with -s, for the docs)."""
    if not OUTCOMES:
        pytest.skip("the damage matrix did not run in this session")
    with capsys.disabled():
        total = Counter()
        for (command, outcome), n in sorted(OUTCOMES.items()):
            total[outcome] += n
            print(f"damage matrix: {command:16} {outcome:9} {n}")
        print(
            f"damage matrix: {len(CASES)} cases ({'all objects' if FULL else 'one object of each type'}), "
            f"{sum(total.values())} runs: "
            + ", ".join(f"{k} {v}" for k, v in sorted(total.items()))
        )
    assert set(total) <= {"error", "correct", "reported", "repaired"}
