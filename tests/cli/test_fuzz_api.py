"""The bad-input matrix of the tour's folder, selftest's devices, Probe.load's arguments,
actstore.open's paths and cache's dtypes (issue 25).

The invariant, for every case: the outcome is a clear error of ours (an ActStoreError,
for the CLI one line ``actstore: error: ...`` with exit 2) that names the problem and the
fix, with no byte on disk changed; or the correct result. Never a traceback, never a fix
that does not work (``model.to(torch.float8)``, ``actstore cache X`` for an X it refuses).

The tour and the selftest are slow, so their work is replaced by a sentinel that stops
them where their work would start: a case passes the up-front checks when the sentinel is
reached (tests/demo/test_demo_model.py runs one whole tour).
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import partial
from pathlib import Path

import pytest
import torch
import zarr

import actstore
from actstore.cli import main
from actstore.errors import ActStoreError, ConfigError, StoreNotFoundError, UnknownSiteError

from .. import helpers


class Started(BaseException):
    """Raised where the real work would begin (a BaseException: no `except Exception` eats it)."""


def digest(path: str | Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of ``path``, a file), by relative path."""
    root = Path(path)
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


one_line_error = partial(helpers.one_line_error, clear=True)  # (capsys, argv, match)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory, tiny_model):
    """A tiny store with one probe (position, on resid_post:1), and a Zarr group not ours."""
    from actstore.probes import fit_probes

    d = tmp_path_factory.mktemp("api")
    store = actstore.cache(
        out=str(d / "s.zarr"),
        model=tiny_model,
        dataset="actstore-demo",
        seq_len=8,
        n_rows=8,
        sites="resid_post:all,mlp_out:0",
        progress=False,
    )
    fit_probes(store, sites="resid_post:1", target="position", progress=False, device="cpu")
    zarr.open_group(str(d / "group.zarr"), mode="w").attrs["what"] = "someone else's"
    return d


# --- the tour's folder -------------------------------------------------------------------

# as an earlier tour leaves them
TOUR_FILES = {
    "demo.zarr": "store",
    "induction.zarr": "store",
    "ioi.zarr": "group",
    "ioi_pairs.jsonl": "file",
    "probe_position.png": "file",
}


def _make(folder: Path, name: str, kind: str, store: Path) -> None:
    path = folder / name
    if kind == "store":  # a real store of the user's
        import shutil

        shutil.copytree(store, path)
    elif kind == "group":  # a results group, as `actstore patch --out` writes
        zarr.open_group(str(path), mode="w").attrs["what"] = "results"
    elif kind == "dir":
        path.mkdir()
        (path / "mine.txt").write_text("the user's")
    else:
        path.write_text("the user's\n")


# (what the folder holds, overwrite) -> None (accepted) or the error's pattern
TOUR_CASES = [
    ("missing", {}, False, None),
    ("empty", {}, False, None),
    ("unrelated files", {"notes.txt": "file"}, False, None),
    (
        "a user's demo.zarr",
        {"demo.zarr": "store"},
        False,
        r"already holds demo.zarr, which no earlier tour made.*"
        r"--overwrite",
    ),
    (
        "a user's ioi_pairs.jsonl",
        {"ioi_pairs.jsonl": "file"},
        False,
        r"already holds ioi_pairs.jsonl.*Pass a new folder, e.g. `actstore tour .*demo_out-tour`",
    ),
    (
        "a user's figure and store",
        {"probe_position.png": "file", "induction.zarr": "store"},
        False,
        r"already holds induction.zarr, probe_position.png",
    ),
    ("a user's demo.zarr, --overwrite", {"demo.zarr": "store"}, True, None),
    ("a user's ioi_pairs.jsonl, --overwrite", {"ioi_pairs.jsonl": "file"}, True, None),
    (
        "a folder named ioi_pairs.jsonl, --overwrite",
        {"ioi_pairs.jsonl": "dir"},
        True,
        r"cannot replace \(ioi_pairs.jsonl is a folder, where the tour writes a file\)",
    ),
    (
        "a non-store demo.zarr, --overwrite",
        {"demo.zarr": "dir"},
        True,
        r"demo.zarr is a folder but not an actstore store",
    ),
    (
        "a file named ioi.zarr",
        {"ioi.zarr": "file"},
        True,
        r"ioi.zarr is a file, where the tour writes a Zarr store",
    ),
    (
        "a previous tour with a non-store demo.zarr",
        {".actstore-tour": "file", "demo.zarr": "dir"},
        False,
        r"demo.zarr is a folder but not an actstore store\); remove it, or pass a new folder",
    ),
    ("a previous tour", {".actstore-tour": "file", **TOUR_FILES}, False, None),
]


@pytest.mark.parametrize("what,holds,overwrite,refused", TOUR_CASES, ids=[c[0] for c in TOUR_CASES])
def test_tour_folder(store_dir, tmp_path, monkeypatch, capsys, what, holds, overwrite, refused):
    import importlib

    # `actstore tour` (actstore.cli is the function main)
    tour = importlib.import_module("actstore.cli.main")

    def started(argv, say):
        raise Started(argv)

    monkeypatch.setattr(tour, "_run", started)
    out = tmp_path / "demo_out"
    if what != "missing":
        out.mkdir()
    for name, kind in holds.items():
        _make(out, name, kind, store_dir / "s.zarr")
    before = digest(out) if out.exists() else None
    kw = {"overwrite": True} if overwrite else {}
    if refused is None:
        with pytest.raises(Started):
            tour.run_tour(str(out), quiet=True, **kw)
        assert (out / ".actstore-tour").is_file()  # the folder is the tour's from now on
        return
    with pytest.raises(ConfigError, match=refused):
        tour.run_tour(str(out), quiet=True, **kw)
    assert digest(out) == before
    one_line_error(
        capsys, ["tour", str(out), "--quiet", *(["--overwrite"] if overwrite else [])], refused
    )
    assert digest(out) == before


# --- selftest's devices ------------------------------------------------------------------


def _have(device: str) -> bool:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()
    return dev.type == "cpu" or (dev.type == "mps" and torch.backends.mps.is_available())


SELFTEST_CASES = [
    ("gpu", r"Unknown device 'gpu'; pass auto"),
    ("", r"Unknown device ''; pass auto"),
    ("meta", r"Unknown device 'meta'"),
    ("CUDA", r"Unknown device 'CUDA'"),
    ("cuda:x", r"Unknown device 'cuda:x'"),
    ("cuda", r"torch sees no CUDA device.*Devices here: cpu.*Nothing was checked"),
    ("cuda:7", r"Device 'cuda:7' was asked for, but torch sees .*Devices here: cpu"),
    ("mps", r"no Apple GPU here.*Devices here: cpu"),
    ("cpu", None),
    ("auto", None),
]


@pytest.mark.parametrize(
    "device,refused", SELFTEST_CASES, ids=[c[0] or "empty" for c in SELFTEST_CASES]
)
def test_selftest_device(monkeypatch, capsys, device, refused):
    from actstore import selftest

    def started(dev, dtype):
        raise Started(dev)

    monkeypatch.setattr(selftest, "_Demo", started)
    if refused is None or (
        refused.startswith(("torch sees", "Device", "no Apple")) and _have(device)
    ):
        with pytest.raises(Started):  # the checks start on a device this machine has
            selftest.run_selftest(device, progress=False)
        return
    with pytest.raises(ConfigError, match=refused):
        selftest.run_selftest(device, progress=False)
    one_line_error(capsys, ["selftest", "--device", device, "--json"], refused)


# --- Probe.load ----------------------------------------------------------------------------

HOOK = "blocks.1.hook_resid_post"
SAVED = r"Probes saved in it: position-logistic for blocks.1.hook_resid_post\."
PROBE_CASES = [  # (store: 'path' | 'Path' | 'open' | other, site, name) -> None (the probe) or (error, pattern)
    ("path", HOOK, None, None),
    ("Path", "resid_post:1", None, None),
    ("open", "resid_post:1", None, None),
    ("open", ("resid_post", 1), "position-logistic", None),
    (
        "open",
        "blocks.0.hook_resid_post",
        None,
        (
            StoreNotFoundError,
            r"has no probe for blocks.0.hook_resid_post; fit one with `actstore probe .*" + SAVED,
        ),
    ),
    (
        "open",
        "resid_post:2",
        None,
        (StoreNotFoundError, r"has no probe for blocks.2.hook_resid_post; fit one"),
    ),
    (
        "open",
        "blocks.2.hook_mlp_out",
        None,
        (
            StoreNotFoundError,
            r"the store does not hold blocks.2.hook_mlp_out, so no probe was fitted on it.*"
            + SAVED,
        ),
    ),
    (
        "open",
        "mlp_out:0",
        None,
        (StoreNotFoundError, r"has no probe for blocks.0.hook_mlp_out; fit one"),
    ),
    (
        "open",
        "resid_post:all",
        None,
        (ConfigError, r"names 3 sites .*a probe is saved per site, so pass one"),
    ),
    ("open", "z:1.2", None, (ConfigError, r"selects heads.*pass blocks.1.attn.hook_z")),
    ("open", "resid_post:9", None, (UnknownSiteError, r"layer 9 is out of range.*" + SAVED)),
    ("open", "bogus", None, (UnknownSiteError, r"Unknown site 'bogus'.*" + SAVED)),
    ("open", "", None, (ConfigError, r"must be a hook name or a site spec")),
    ("open", 3, None, (ConfigError, r"must be a hook name or a site spec")),
    (
        "open",
        HOOK,
        "nope",
        (StoreNotFoundError, r"has no probe 'nope' for blocks.1.hook_resid_post; it has: position"),
    ),
    (3, HOOK, None, (ConfigError, r"store must be a store's path or an ActivationStore")),
    ("missing", HOOK, None, (StoreNotFoundError, r"No store at .*missing.zarr'. Create one")),
]


@pytest.mark.parametrize(
    "given,site,name,expect", PROBE_CASES, ids=[f"{c[0]}-{c[1]!r}-{c[2]}" for c in PROBE_CASES]
)
def test_probe_load(store_dir, given, site, name, expect):
    from actstore.probes import Probe

    path = store_dir / "s.zarr"
    store = {
        "path": str(path),
        "Path": path,
        "open": actstore.open(path),
        "missing": str(store_dir / "missing.zarr"),
    }.get(given, given)
    before = digest(path)
    if expect is None:
        got = Probe.load(store, site, name)
        want = Probe.load(actstore.open(path), HOOK, "position-logistic")
        assert got.hook == HOOK and got.name == want.name
        assert (got.weight == want.weight).all() and (got.bias == want.bias).all()
    else:
        with pytest.raises(expect[0], match=expect[1]):
            Probe.load(store, site, name)
    assert digest(path) == before


# --- actstore.open ---------------------------------------------------------------------------

OPEN_CASES = [
    (
        "missing.zarr",
        None,
        r"No store at '.*missing.zarr'. Create one with `actstore cache .*missing.zarr --model",
    ),
    (
        "empty",
        "empty",
        r"'.*empty' is an empty folder, not a store yet.*create one there with `actstore cache ",
    ),
    (
        "notes.txt",
        "file",
        r"'.*notes.txt' is a file, not an actstore store.*at a new path with `actstore cache NEW.zarr",
    ),
    (
        "thesis",
        "folder",
        r"'.*thesis' is a folder but not an actstore store \(it holds chapter1.tex, chapter2.tex, "
        r"chapter3.tex and 1 more.*at a new path.*even with --overwrite",
    ),
    (
        "group.zarr",
        "group",
        r"'.*group.zarr' is a Zarr group but not an actstore store \(it has no 'actstore' metadata\)"
        r".*at a new path",
    ),
    ("s.zarr", "store", None),
]


@pytest.mark.parametrize("name,kind,refused", OPEN_CASES, ids=[c[0] for c in OPEN_CASES])
def test_open(store_dir, tmp_path, capsys, tiny_model, name, kind, refused):
    path = tmp_path / name
    if kind == "empty":
        path.mkdir()
    elif kind == "file":
        path.write_text("notes")
    elif kind == "folder":
        path.mkdir()
        for i in range(4):
            (path / f"chapter{i + 1}.tex").write_text("years of work")
    elif kind in ("group", "store"):
        path = store_dir / name
    before = digest(path) if path.exists() else None
    if refused is None:
        assert (
            actstore.open(path).n_rows == 8
            and actstore.open(str(path)).sites[0] == "blocks.0.hook_mlp_out"
        )
        return
    with pytest.raises(StoreNotFoundError, match=refused):
        actstore.open(path)
    one_line_error(capsys, ["info", str(path)], refused)
    assert (digest(path) if path.exists() else None) == before
    # the advice: not into this path, even with --overwrite (it is true)
    if kind in (
        "folder",
        "file",
        "group",
    ):
        one_line_error(
            capsys,
            [
                "cache",
                str(path),
                "--model",
                tiny_model,
                "--dataset",
                "actstore-demo",
                "--seq-len",
                "8",
                "--n-rows",
                "2",
                "--sites",
                "resid_post:0",
                "--overwrite",
                "--quiet",
            ],
            r"exists and is not an actstore store",
        )
        assert (digest(path) if path.exists() else None) == before


def test_open_advice_for_an_empty_folder_works(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreNotFoundError, match="create one there with `actstore cache"):
        actstore.open(tmp_path / "empty")
    assert (
        main(
            [
                "cache",
                str(tmp_path / "empty"),
                "--model",
                tiny_model,
                "--dataset",
                "actstore-demo",
                "--seq-len",
                "8",
                "--n-rows",
                "2",
                "--sites",
                "resid_post:0",
                "--quiet",
            ]
        )
        == 0
    )
    assert actstore.open(tmp_path / "empty").is_complete


# --- cache's dtypes ---------------------------------------------------------------------------

UNKNOWN = (
    r"Unknown dtype {}; actstore computes in 'float32', 'float16', 'bfloat16'. Pass one of those"
)
DTYPE_CASES = [  # (dtype, by name, by object (a float32 bridge)): None is a correct run, else the error's pattern
    ("float8", UNKNOWN.format("'float8'"), UNKNOWN.format("'float8'")),
    ("float64", UNKNOWN.format("'float64'"), UNKNOWN.format("'float64'")),
    ("fp16", UNKNOWN.format("'fp16'"), UNKNOWN.format("'fp16'")),
    ("half", UNKNOWN.format("'half'"), UNKNOWN.format("'half'")),
    ("", UNKNOWN.format("''"), UNKNOWN.format("''")),
    (
        torch.float16,
        r"got the torch dtype torch.float16: pass dtype='float16'",
        r"torch.float16: pass dtype='float16'",
    ),
    (
        torch.float8_e4m3fn,
        r"torch dtype torch.float8_e4m3fn: pass one of 'float32'",
        r"pass one of 'float32'",
    ),
    (
        "bfloat16",
        None,
        r"computes in float32, but dtype 'bfloat16' was asked for; convert it first "
        r"\(model.to\(torch.bfloat16\)\)",
    ),
    ("float32", None, None),
]


@pytest.mark.parametrize("by", ["name", "object"])
@pytest.mark.parametrize(
    "dtype,by_name,by_object", DTYPE_CASES, ids=[str(c[0]) or "empty" for c in DTYPE_CASES]
)
def test_cache_dtype(tmp_path, tiny_model, bridge, by, dtype, by_name, by_object):
    out = tmp_path / "o.zarr"
    refused = by_name if by == "name" else by_object
    run = dict(
        out=str(out),
        model=tiny_model if by == "name" else bridge,
        dataset="actstore-demo",
        seq_len=8,
        n_rows=2,
        sites="resid_post:0",
        dtype=dtype,
        progress=False,
    )
    if refused is None:
        assert actstore.cache(**run).meta.model.dtype == dtype
        return
    with pytest.raises(ActStoreError, match=refused) as e:
        actstore.cache(**run)
    # an advice that works: a real torch dtype
    for advised in re.findall(r"torch\.(\w+)\)", str(e.value)):
        assert isinstance(getattr(torch, advised, None), torch.dtype), (
            f"advises torch.{advised}: {e.value}"
        )
    assert os.listdir(tmp_path) == []  # nothing written
