"""`actstore circuit` under torchrun (2 CPU processes, gloo): the batches of pairs are
shared out and the results gathered in batch order, so the written group equals a single
process's byte for byte (every array of every method; the attributes but the command line
and the time), on the trained demo model (GPT-2's engine) and a random GPT-NeoX model
(the hooked one)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import zarr

from ..capture.test_parallel import _run, _torchrun

pytestmark = pytest.mark.slow
METHODS = "eap,exact,eap-ig-inputs"


def _args(model: str, out: str) -> list[str]:
    return [
        "circuit",
        "--model",
        model,
        "--task",
        "ioi",
        "--n-pairs",
        "5",
        "--batch-pairs",
        "2",
        "--method",
        METHODS,
        "--steps",
        "2",
        "--top",
        "12",
        "--out",
        out,
        "--device",
        "cpu",
        "--quiet",
    ]


def _arrays(path: str) -> dict[str, tuple[np.ndarray, dict]]:
    group = zarr.open_group(path, mode="r")
    out = {}
    for method in METHODS.split(","):
        for name, arr in group[f"circuit/{method}"].arrays():
            attrs = {
                k: v for k, v in arr.attrs.asdict().items() if k not in ("created", "command_line")
            }
            out[f"{method}/{name}"] = (np.asarray(arr[...]), attrs)
    return out


@pytest.mark.parametrize("which", ["demo", "gpt_neox"])
def test_two_processes_write_what_one_writes(which, family_model, tmp_path):
    model = "actstore-demo" if which == "demo" else family_model("gpt_neox")
    one, two = str(tmp_path / "one.zarr"), str(tmp_path / "two.zarr")
    for got in (
        _run([sys.executable, "-m", "actstore", *_args(model, one)]),
        _torchrun(_args(model, two)),
    ):
        # (both with the same environment: one thread each)
        assert got.returncode == 0, got.stderr[-3000:]
    want, have = _arrays(one), _arrays(two)
    assert sorted(have) == sorted(want) and len(want) >= 3 * 14
    for key, (a, attrs) in want.items():
        b, battrs = have[key]
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), key
        assert battrs == attrs, key
    assert np.unique(want["exact/scores"][0]).size > 10  # (scores that differ: a real comparison)
