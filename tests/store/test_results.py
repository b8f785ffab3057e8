"""The one results writer: arrays with dims and attrs under results/<name>; nothing
already written is replaced unless asked, and a replaced result is replaced whole."""

import numpy as np
import pytest
import zarr

import actstore
from actstore.errors import ConfigError, ResultExistsError, StoreExistsError
from actstore.store import ResultWriter, write_result


@pytest.fixture
def store(v1_store):
    return actstore.open(v1_store)


def test_write_and_read_back(store):
    with ResultWriter.for_store(store, "analysis/mine") as w:
        w.write(
            "scores", np.arange(6.0).reshape(2, 3), ("layer", "head"), {"rows": 4, "note": None}
        )
        w.write("n", np.int64(7), ())
    # the open store sees them at once
    assert store.results() == [
        "analysis/mine/n",
        "analysis/mine/scores",
    ]
    arr = actstore.open(store.path).load_result("analysis/mine/scores")
    assert arr.metadata.dimension_names == ("layer", "head") and dict(arr.attrs) == {
        "rows": 4,
        "note": None,
    }
    assert np.array_equal(arr[...], np.arange(6.0).reshape(2, 3))


def test_an_existing_result_is_refused_before_anything_is_written(store):
    write_result(store, "analysis/mine/scores", np.zeros(3), ("layer",))
    with pytest.raises(
        ResultExistsError,
        match=r"already holds the result 'results/analysis/mine' "
        r"\(results/analysis/mine: 1 array\); pass overwrite=True",
    ):
        ResultWriter.for_store(store, "analysis/mine")
    with pytest.raises(ResultExistsError, match=r"pass overwrite=True to replace it"):
        write_result(store, "analysis/mine/scores", np.ones(3), ("layer",))
    with pytest.raises(ResultExistsError):
        # the store's own method: same rule
        store.save_result("analysis/mine/scores", np.ones(3), ("layer",))
    assert np.array_equal(store.load_result("analysis/mine/scores")[...], np.zeros(3))
    # `except StoreExistsError` still catches it
    assert isinstance(ResultExistsError("x"), StoreExistsError)


def test_replace_replaces_the_whole_result(store):
    with ResultWriter.for_store(store, "probes/p/h") as w:
        for name in ("weight", "bias", "classes"):
            w.write(name, np.zeros(2), ("class",))
    with ResultWriter.for_store(store, "probes/p/h", replace=True) as w:
        w.write("weight", np.ones(2), ("class",))
        w.write("bias", np.ones(2), ("class",))
    # classes, not written this time, is gone
    assert store.results() == [
        "probes/p/h/bias",
        "probes/p/h/weight",
    ]
    assert np.array_equal(store.load_result("probes/p/h/weight")[...], np.ones(2))
    write_result(store, "probes/p/h/weight", np.full(2, 5.0), ("class",), overwrite=True)
    assert np.array_equal(
        actstore.open(store.path).load_result("probes/p/h/weight")[...], np.full(2, 5.0)
    )


def test_a_failed_run_removes_nothing(store):
    with ResultWriter.for_store(store, "analysis/a") as w:
        w.write("x", np.zeros(2), ("i",))
        w.write("y", np.zeros(2), ("i",))
    with pytest.raises(RuntimeError):
        with ResultWriter.for_store(store, "analysis/a", replace=True) as w:
            w.write("x", np.ones(2), ("i",))
            raise RuntimeError("the job failed half-way")
    # y is not pruned by a run that did not finish
    assert store.results() == [
        "analysis/a/x",
        "analysis/a/y",
    ]


@pytest.mark.parametrize(
    "args,match",
    [
        ((np.zeros((2, 2)), ("i",)), r"1 dimension names for an array of 2 dimensions"),
        ((np.zeros(2), ("i",), {"f": object()}), r"its attributes are not JSON"),
    ],
)
def test_bad_arrays_fail_before_writing(store, args, match):
    with pytest.raises(ConfigError, match=match):
        ResultWriter.for_store(store, "analysis/b").write("x", *args)
    assert store.results() == []


def test_the_same_array_twice_in_one_run_is_refused(store):
    w = ResultWriter.for_store(store, "analysis/c", replace=True)
    w.write("x", np.zeros(2), ("i",))
    with pytest.raises(ResultExistsError, match="already written by this run"):
        w.write("x", np.ones(2), ("i",))


def test_a_results_group_outside_a_store(tmp_path):
    out = str(tmp_path / "r.zarr")
    with ResultWriter(out, "patching/resid_pre") as w:
        w.write("logit_diff", np.zeros((2, 3)), ("pair", "layer"))
    assert zarr.open_group(out, mode="r")["patching/resid_pre/logit_diff"].shape == (2, 3)
    with pytest.raises(ResultExistsError, match="'patching/resid_pre'"):
        ResultWriter(out, "patching/resid_pre")
    ResultWriter(out, "patching/other")  # another result beside it is fine
    (tmp_path / "file").write_text("not zarr")
    with pytest.raises(StoreExistsError, match="exists and is not a Zarr group"):
        ResultWriter(str(tmp_path / "file"), "patching/x")
