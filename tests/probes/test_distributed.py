"""`actstore probe` under torchrun (2 CPU processes, gloo) against one process on the
same store: ridge to float64 rounding, logistic (in memory and streamed) to the same
accuracy with weights close; process 0 alone writes and prints, every process returns
the same report, and an error in one process's share of the store is raised by both."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap

import numpy as np
import pytest

import actstore
from actstore.probes import Probe, fit_probes

from ..capture.test_parallel import _run, _torchrun
from ..helpers import free_port

pytestmark = pytest.mark.slow
SITES = "resid_post:1,resid_post:2"
HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
# C 0.1: well conditioned, converges in < 100 steps
LOGISTIC = dict(target="position", kind="logistic", C=0.1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The trained demo model (a real fit; random-init models are nearly linear) on 48 rows of
    4 (one row per shard), so 2 processes read 6 disjoint read units each; plus the
    single-process probes each distributed run is compared with."""
    out = tmp_path_factory.mktemp("probedist") / "s.zarr"
    s = actstore.cache(
        out=str(out),
        model="actstore-demo",
        dataset="actstore-demo",
        sites=SITES,
        seq_len=24,
        n_rows=48,
        batch_size=8,
        rows_per_chunk=4,
        rows_per_shard=4,
        progress=False,
    )
    fit_probes(
        s,
        sites=SITES,
        target="position",
        kind="ridge",
        name="one-ridge",
        device="cpu",
        progress=False,
    )
    fit_probes(s, sites=SITES, name="one-logistic", device="cpu", progress=False, **LOGISTIC)
    return s


def _probe_cli(store, name, *extra):
    got = _torchrun(
        [
            "probe",
            store.path,
            "--sites",
            SITES,
            "--name",
            name,
            "--device",
            "cpu",
            "--quiet",
            "--json",
            "--plot",
            "none",
            *extra,
        ]
    )
    assert got.returncode == 0, got.stderr[-3000:]
    return json.loads(got.stdout)  # one JSON object: process 0 prints, process 1 does not


def _saved(store, name):
    return {h: Probe.load(store, h, name) for h in HOOKS}


def _written(store, name):
    return sorted(r for r in store.results() if r.startswith(f"probes/{name}/"))


def _assert_close(got, want, rel):
    """Every array of ``got`` within ``rel`` x the spread of ``want``'s (the size of a ridge's
    one bias), and that spread large."""
    for h in HOOKS:
        for a, b in ((got[h].weight, want[h].weight), (got[h].bias, want[h].bias)):
            spread = np.ptp(b) if b.size > 1 else np.abs(b).max()
            assert spread > 0.3, (h, spread)  # probes that separate, not a constant
            assert np.abs(a - b).max() <= rel * spread, (h, np.abs(a - b).max(), spread)


def test_ridge_two_processes_equal_one(store):
    printed = _probe_cli(store, "two-ridge", "--target", "position", "--kind", "ridge")
    one, two = _saved(store, "one-ridge"), _saved(store, "two-ridge")
    _assert_close(two, one, 1e-10)  # float64 sums in another order: ~1e-13 of the spread here
    for h in HOOKS:
        ref = one[h].attrs["scores"]
        assert printed[h] == two[h].attrs["scores"]  # printed = saved
        assert (
            printed[h]["n_train"] == ref["n_train"] > 800
            and printed[h]["n_test"] == ref["n_test"] > 200
        )
        assert printed[h]["train"] == pytest.approx(ref["train"], abs=1e-10) and ref["train"] > 0.8
        assert printed[h]["test"] == pytest.approx(ref["test"], abs=1e-10)
    assert _written(store, "two-ridge") == [
        f"probes/two-ridge/{h}/{a}" for h in HOOKS for a in ("bias", "weight")
    ]


def _same_accuracy(got, ref):
    """Accuracies equal up to a position or two on the decision boundary of float32 sums in
    another order (train: 874 positions, test: 230)."""
    assert got["n_train"] == ref["n_train"] and got["n_test"] == ref["n_test"] and got["converged"]
    assert (
        abs(got["train"] - ref["train"]) <= 2 / ref["n_train"]
        and ref["train"] > 3 * ref["baseline"]
    )
    assert abs(got["test"] - ref["test"]) <= 2 / ref["n_test"]


def test_logistic_in_memory_two_processes_as_one(store):
    printed = _probe_cli(store, "two-logistic", *(f"--{k}={v}" for k, v in LOGISTIC.items()))
    one, two = _saved(store, "one-logistic"), _saved(store, "two-logistic")
    # the same problem to float32 summation order, stopped at |gradient| <= tol
    _assert_close(two, one, 1e-3)
    for h in HOOKS:
        assert two[h].attrs["notes"]["data"] == "memory" and two[h].attrs["notes"]["processes"] == 2
        _same_accuracy(printed[h], one[h].attrs["scores"])
    assert _written(store, "two-logistic") == [
        f"probes/two-logistic/{h}/{a}" for h in HOOKS for a in ("bias", "classes", "weight")
    ]


SCRIPT = """
import json, sys
import actstore
from actstore.errors import ActStoreError
from actstore.probes import fit_probes

path, damaged, out = sys.argv[1:4]
rank = int(__import__("os").environ["RANK"])
rep = fit_probes(actstore.open(path), sites={sites!r}, name="two-stream", device="cpu", progress=False,
                 max_memory_gb=0, **{logistic!r})
try:
    fit_probes(actstore.open(damaged), sites={sites!r}, target="position", kind="ridge", save=False,
               device="cpu", progress=False)
    error = None
except ActStoreError as e:
    error = [type(e).__name__, str(e)]
json.dump({{"report": rep.to_json(), "notes": rep.notes, "error": error}}, open(f"{{out}}/rank{{rank}}.json", "w"))
"""


def test_streamed_logistic_every_process_reports_the_same_and_errors_reach_both(store, tmp_path):
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(store.path, damaged)
    (
        damaged / "acts" / HOOKS[0] / "c" / "1" / "0" / "0"
    ).unlink()  # rows 4..7: read unit 1, process 1's share
    script = tmp_path / "fit.py"
    script.write_text(textwrap.dedent(SCRIPT.format(sites=SITES, logistic=LOGISTIC)))
    got = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(free_port()),
            str(script),
            store.path,
            str(damaged),
            str(tmp_path),
        ]
    )
    assert got.returncode == 0, got.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # the same report, notes and error on both processes
    assert ranks[0]["notes"]["data"] == "stream"
    one, two = _saved(store, "one-logistic"), _saved(store, "two-stream")
    _assert_close(two, one, 1e-3)
    for h in HOOKS:
        _same_accuracy(ranks[0]["report"][h], one[h].attrs["scores"])
    # process 1 met it; process 0 raises the same error, not a hang
    name, message = ranks[0]["error"]
    assert (
        name == "CorruptChunkError" and "rows 4..7 (shard 1)" in message and "--repair" in message
    )
