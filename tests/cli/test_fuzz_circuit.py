"""The bad-input matrix of the prompt-pair jobs `circuit` and `patch` and of the
path-patching API (issue 25): tables of cases over

- circuit's output folder: an existing group of another model, pair set, metric or
  circuit setting, with and without --overwrite, and a group the run adds a method to;
- --write-pairs: a folder (with and without --overwrite), a folder-like path, a missing
  folder, an existing file, the --out path;
- --store: a store of other prompts, or without the sites the run reads, whose error's
  fix is then followed as written (the cache command run, or the new --store passed);
- the arguments of path_patch, path_patch_sweep and Paths.

The invariant: a clear error of ours (exit 2 and one line ``actstore: error: ...``, or a
ConfigError naming the accepted forms) with no byte changed in the folder, or a correct
result; for circuit's output folder, the group and the figures beside it byte for byte
those of one fresh run of the same identity and methods. `patch` and `circuit` under
torchrun share their batches of pairs (tests/capture/test_parallel.py,
tests/circuits/test_distributed.py).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from actstore.circuits.paths import Paths, path_patch, path_patch_sweep
from actstore.cli import main
from actstore.errors import ConfigError

from ..fidelity_cases import demo_case

MODEL = "actstore-demo"
PAIRS = ["--task", "ioi", "--n-pairs", "2"]
CLEAN_SITES = "z:all,mlp_out:all,resid_pre:0"


def circuit(
    out: Path, model: str = MODEL, method: str = "eap", pairs: list[str] = PAIRS, *extra: str
) -> list[str]:
    return [
        "circuit",
        "--model",
        model,
        *pairs,
        "--top",
        "10",
        "--method",
        method,
        "--out",
        str(out),
        "--quiet",
        "--device",
        "cpu",
        *extra,
    ]


def tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def one_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("actstore: error: ") and err.count("\n") == 1, (
        argv,
        code,
        err[-2000:],
    )
    return err


def refused(capsys, folder: Path, argv: list[str], pattern: str) -> str:
    """The command is a clear error matching ``pattern`` and changes no byte under ``folder``."""
    before = tree(folder)
    err = one_error(capsys, argv)
    assert re.search(pattern, err), err
    assert tree(folder) == before, f"{shlex.join(argv)} refused but changed {folder}"
    return err


# --- circuit's output folder ----------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, tiny_model):
    """One fresh run per folder: the groups the cases start from and compare with."""
    d = tmp_path_factory.mktemp("fresh")
    runs = {"eap": (MODEL, "eap"), "both": (MODEL, "exact,eap"), "tiny": (tiny_model, "eap")}
    for name, (model, method) in runs.items():
        (d / name).mkdir()
        assert main(circuit(d / name / "c.zarr", model, method)) == 0
    return d


def same_as_fresh(folder: Path, fresh: Path) -> None:
    """The group's arrays, their attributes (but when and how it was run) and the figures
    beside it, byte for byte, equal those of the fresh run."""
    figures = lambda f: {k: v for k, v in tree(f).items() if not k.startswith("c.zarr")}  # noqa: E731
    assert figures(folder) == figures(fresh)
    got, want = (zarr.open_group(str(f / "c.zarr"), mode="r") for f in (folder, fresh))
    assert dict(got["circuit"].attrs) == dict(want["circuit"].attrs)  # the identity
    assert sorted(got["circuit"].group_keys()) == sorted(want["circuit"].group_keys())
    for method in want["circuit"].group_keys():
        g, w = got[f"circuit/{method}"], want[f"circuit/{method}"]
        assert sorted(g.array_keys()) == sorted(w.array_keys()), method
        for name in w.array_keys():
            assert np.array_equal(g[name][...], w[name][...]), (method, name)
            strip = lambda a: {k: v for k, v in a.items() if k not in ("created", "command_line")}  # noqa: E731
            assert strip(dict(g[name].attrs)) == strip(dict(w[name].attrs)), (method, name)


# (start from, the second run's changes, --overwrite, an error's pattern or the fresh run it equals)
OUT_CASES = [
    (
        "both",
        dict(model="tiny"),
        False,
        r"holds circuit results \(exact, eap\) of another run: model: the group has "
        r"'actstore-demo' .* this run '.*tiny'.*pass --overwrite to replace the whole",
    ),
    (
        "eap",
        dict(model="tiny", method="exact"),
        False,
        r"of another run: model: the group has 'actstore-demo'",
    ),
    # replaced whole: no exact, no stale eap-vs-exact.png
    (
        "both",
        dict(model="tiny"),
        True,
        "tiny",
    ),
    (
        "eap",
        dict(pairs=["--task", "ioi", "--n-pairs", "3"], method="exact"),
        False,
        r"pairs: the group has 2 pairs \(task ioi seed 0\), this run 3 pairs \(task ioi seed 0\)",
    ),
    (
        "eap",
        dict(pairs=[*PAIRS, "--seed", "1"], method="exact"),
        False,
        r"pairs: .* this run 2 pairs \(task ioi seed 1\)",
    ),
    (
        "eap",
        dict(extra=["--metric", "kl"], method="exact"),
        False,
        r"--metric: the group has 'logit-diff', this run 'kl'",
    ),
    (
        "eap",
        dict(extra=["--top", "5"], method="exact"),
        False,
        r"--top: the group has 10, this run 5",
    ),
    (
        "eap",
        dict(extra=["--selection", "greedy"], method="exact"),
        False,
        r"--selection: the group has 'top-n'",
    ),
    ("eap", dict(method="exact"), False, "both"),  # a method added: every figure shows both
    (
        "eap",
        dict(),
        False,
        r"already holds eap circuit results \(circuit/eap: \d+ arrays\); pass --overwrite",
    ),
    ("both", dict(method="eap"), True, "both"),  # one method replaced: the figures still show both
]


@pytest.mark.parametrize(
    "start,change,overwrite,expect",
    OUT_CASES,
    ids=[f"{s}-{'-'.join(c) or 'same'}-{'ow' if o else 'new'}" for s, c, o, _ in OUT_CASES],
)
def test_circuit_output_folder(
    fresh, tiny_model, tmp_path, capsys, start, change, overwrite, expect
):
    folder = tmp_path / "case"
    shutil.copytree(fresh / start, folder)
    model = tiny_model if change.get("model") == "tiny" else MODEL
    argv = circuit(
        folder / "c.zarr",
        model,
        change.get("method", "eap"),
        change.get("pairs", PAIRS),
        *change.get("extra", []),
        *(["--overwrite"] if overwrite else []),
    )
    if expect in ("both", "eap", "tiny"):
        assert main(argv) == 0
        same_as_fresh(folder, fresh / expect)
    else:
        refused(capsys, folder, argv, expect)


def test_a_group_without_an_identity_is_replaced_only_with_overwrite(fresh, tmp_path, capsys):
    folder = tmp_path / "case"
    shutil.copytree(fresh / "eap", folder)
    # an earlier version's group
    del zarr.open_group(str(folder / "c.zarr"), mode="r+")["circuit"].attrs["identity"]
    refused(
        capsys,
        folder,
        circuit(folder / "c.zarr", MODEL, "exact"),
        r"record no identity .* pass --overwrite",
    )


# --- --write-pairs ---------------------------------------------------------------------------


def _patch(out: Path, *extra: str) -> list[str]:
    return [
        "patch",
        "--model",
        MODEL,
        *PAIRS,
        "--out",
        str(out),
        "--quiet",
        "--device",
        "cpu",
        *extra,
    ]


# (command, what --write-pairs names, --overwrite, an error's pattern; None: the pairs are written)
WRITE_PAIRS = [
    (cmd, where, ow, pattern)
    for cmd in ("patch", "circuit")
    for where, ow, pattern in [
        (
            "dir",
            False,
            r"--write-pairs \S+ is a folder; --write-pairs needs a file path, e.g. \S+/pairs.jsonl",
        ),
        ("dir", True, r"is a folder; --write-pairs needs a file path"),
        ("newdir/", True, r"is a folder; --write-pairs needs a file path"),
        ("missing/p.jsonl", False, r"its folder does not exist; create it"),
        ("file", False, r"already exists; pass --overwrite to replace it"),
        ("out", False, r"is also the --out path"),
    ]
] + [("patch", "file", True, None)]


@pytest.mark.parametrize("command,where,overwrite,pattern", WRITE_PAIRS)
def test_write_pairs(tmp_path, capsys, command, where, overwrite, pattern):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("my pairs\n")
    out = tmp_path / "out"
    path = str(tmp_path / where) + ("/" if where.endswith("/") else "")
    argv = (_patch(out) if command == "patch" else circuit(out)) + ["--write-pairs", path]
    argv += ["--overwrite"] if overwrite else []
    if pattern is not None:
        refused(capsys, tmp_path, argv, pattern)
        return
    assert main(argv) == 0
    lines = Path(path).read_text().splitlines()
    assert len(lines) == 2 and all('"clean"' in line for line in lines)


# --- --store of other prompts or sites: the fix, followed as written, is accepted --------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import actstore
    from actstore.demo import demo_tokenizer
    from actstore.patching import tasks

    d = tmp_path_factory.mktemp("stores")
    tasks.write_pairs(tasks.make_pairs("ioi", 2, 0, demo_tokenizer()), d / "pairs.jsonl")
    other = ["When Tom and Ann went to the park, Ann gave a ball to"]
    for name, sites in (("other", CLEAN_SITES), ("sites", "resid_pre:all")):
        actstore.cache(
            out=str(d / f"{name}.zarr"),
            model=MODEL,
            dataset=other,
            packing="document",
            seq_len=16,
            sites=sites,
            progress=False,
        )
    return d


STORE_CASES = [
    ("circuit", "other", "pairs"),
    ("circuit", "sites", "pairs"),
    ("circuit", "other", "task"),
    ("patch", "other", "pairs"),
]


@pytest.mark.parametrize("command,store,source", STORE_CASES)
def test_store_fix_is_complete(world, tmp_path, capsys, command, store, source):
    folder = tmp_path / "case"
    shutil.copytree(world, folder)
    pairs = ["--pairs", str(folder / "pairs.jsonl")] if source == "pairs" else PAIRS

    def run(s):
        if command == "circuit":
            return circuit(folder / "c.zarr", MODEL, "eap", pairs) + ["--store", str(s)]
        return [
            "patch",
            "--model",
            MODEL,
            *pairs,
            "--out",
            str(folder / "p.zarr"),
            "--quiet",
            "--store",
            str(s),
        ]

    err = refused(
        capsys,
        folder,
        run(folder / f"{store}.zarr"),
        r"Pass a new --store path, e\.g\. --store \S+",
    )
    new = re.search(
        r"--store (\S+) \(the clean prompts are then cached into it with --sites (\S+)\)", err
    )
    assert new and not Path(new[1]).exists(), err
    assert new[2] == (CLEAN_SITES if command == "circuit" else "resid_pre:all"), err
    if source == "pairs":  # the complete cache command, run as written
        cmd = re.search(
            r"cache them yourself: (actstore cache .*), then pass --store (\S+)\.$", err.strip()
        )
        assert cmd, err
        argv = shlex.split(cmd[1])
        assert argv[:2] == ["actstore", "cache"] and main(argv[1:] + ["--quiet"]) == 0
        assert cmd[2] == new[1]
    assert main(run(new[1])) == 0


# --- path_patch, path_patch_sweep, Paths -------------------------------------------------------


@pytest.fixture(scope="module")
def case():
    return demo_case("late")


SENDERS = r"senders must be a name or a list of names, each 'input', 'a\{L\}.h\{H\}'"
RECEIVERS = r"receivers must be a name or a list of names, each 'a\{L\}.h\{H\}'"
TOKENS = r"base_tokens must be integer token ids of shape \(batch, pos\)"
# the arguments changed from a good call (path_patch(model, clean, corrupted, ld, "m0", "m2")), and the error
BAD_CALLS = [
    (dict(senders=3), SENDERS + r".*got 3\."),
    (dict(senders=None), SENDERS + r".*got None\."),
    (dict(senders=[1, 2]), SENDERS),
    (dict(receivers=None), RECEIVERS),
    (dict(receivers=5), RECEIVERS),
    (dict(through=7), r"through must be a name or a list of names"),
    (dict(direct="yes"), r"direct must be True, False or None"),
    (dict(per_example="yes"), r"per_example must be True \(one value per prompt\) or False"),
    (dict(memory_budget=0), r"memory_budget must be a positive number of bytes"),
    (dict(memory_budget=-5), r"memory_budget must be a positive number of bytes"),
    (dict(memory_budget="1GB"), r"memory_budget must be a positive number of bytes"),
    (dict(metric=None), r"metric must be a function of the logits"),
    (
        dict(metric="per_example"),
        r"must return a scalar under per_example=False \(the default\).*pass "
        r"per_example=True to keep per-example values",
    ),
    (dict(model=None), r"model must be a TransformerBridge"),
    (dict(forward="fwd"), r"forward must be a GraphForward of the model"),
    (dict(base=None), TOKENS + r".*got NoneType; tokenise the prompts first"),
    (dict(base="When Mary"), TOKENS + r".*got str"),
    (dict(base="float"), TOKENS + r".*torch.float32"),
    (dict(base="3d"), TOKENS + r".*got \(1, 4, 15\)"),
    (
        dict(base="vocab"),
        r"base_tokens holds token id \d+, outside the model's vocabulary \(0 to \d+\)",
    ),
    (dict(base="negative"), r"base_tokens holds token id -1, outside the model's vocabulary"),
    (
        dict(base="long"),
        r"base_tokens has prompts of \d+ tokens, beyond the model's context of \d+",
    ),
    (dict(base="no batch"), r"base_tokens has shape \(0, 15\): pass at least one prompt"),
    (dict(base="no pos"), r"base_tokens has shape \(4, 0\): pass at least one prompt"),
    (dict(receivers="m9"), r"receiver 'm9' is not an input of the graph"),
]


def _tokens(case, how: str):
    t = case.clean
    return {
        "float": t.float(),
        "3d": t[None],
        "vocab": t + 10**6,
        "negative": t - t - 1,
        "long": t.repeat(1, 20),
        "no batch": t[:0],
        "no pos": t[:, :0],
    }.get(how, how)


def _call(case, sweep: bool = False, **change):
    args = dict(
        model=case.bridge,
        base=case.clean,
        other=case.corrupted,
        metric=case.ld,
        senders="m0",
        receivers="m2",
    )
    args.update(change)
    if isinstance(args["base"], str) and args["base"] in (
        "float",
        "3d",
        "vocab",
        "negative",
        "long",
        "no batch",
        "no pos",
    ):
        args["base"] = _tokens(case, args["base"])
        args["other"] = (
            args["base"] if args["base"].ndim != 2 or args["base"].shape[0] == 0 else args["other"]
        )
    if args["metric"] == "per_example":  # one value per prompt, without per_example=True
        from actstore.patching import LogitDiff

        args["metric"] = LogitDiff(case.answer, case.wrong, per_example=True)
    kw = {
        k: args.pop(k)
        for k in ("through", "direct", "per_example", "memory_budget", "forward")
        if k in args
    }
    if sweep:
        variant = Paths(
            args["senders"], args["receivers"], kw.pop("through", ()), kw.pop("direct", None)
        )
        return path_patch_sweep(
            args["model"], args["base"], args["other"], args["metric"], [variant], **kw
        )
    return path_patch(
        args["model"],
        args["base"],
        args["other"],
        args["metric"],
        args["senders"],
        args["receivers"],
        **kw,
    )


@pytest.mark.parametrize(
    "change,pattern",
    BAD_CALLS,
    ids=[",".join(f"{k}={v!r}"[:20] for k, v in c.items()) for c, _ in BAD_CALLS],
)
@pytest.mark.parametrize("sweep", [False, True], ids=["path_patch", "path_patch_sweep"])
def test_path_patch_arguments(case, monkeypatch, change, pattern, sweep):
    from actstore.circuits import forward

    def no_work(*args, **kwargs):
        raise AssertionError("ran a forward before validating")

    if "metric" not in change:  # a metric's shape shows only on the logits
        monkeypatch.setattr(forward.GraphForward, "node_outputs", no_work)
    with pytest.raises(ConfigError, match=pattern):
        _call(case, sweep, **change)


@pytest.mark.parametrize(
    "change",
    [
        dict(through=None),
        dict(base="int16"),
        dict(variants="generator"),
        dict(direct=np.bool_(True)),
    ],
)
def test_path_patch_accepted_forms_give_the_plain_result(case, change):
    """Forms that mean the same as the plain call give its value exactly."""
    want = _call(case, receivers="a3.h0")
    if change.get("base") == "int16":
        got = path_patch(
            case.bridge, case.clean.short(), case.corrupted.short(), case.ld, "m0", "a3.h0"
        )
    elif change.get("variants") == "generator":
        got = path_patch_sweep(
            case.bridge, case.clean, case.corrupted, case.ld, (p for p in [Paths("m0", "a3.h0")])
        )[0]
    else:
        got = _call(case, receivers="a3.h0", **change)
    assert torch.equal(got, want)
