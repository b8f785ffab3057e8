"""store[key]: a lazy view that reads through the same checks as store.acts: rows of
an unfinished store that are not done raise RowsNotDoneError instead of reading as the
fill value."""

import numpy as np
import pytest
import zarr

import actstore
from actstore.errors import RowsNotDoneError, UnknownSiteError

from .conftest import V1_STORE

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def store():
    return actstore.open(V1_STORE)


def test_keys_name_the_same_array(store):
    want = store.acts(HOOK)
    for key in (HOOK, "resid_post:0", ("resid_post", 0), "resid_post:all"):
        view = store[key]
        assert view.name == f"acts/{HOOK}" and np.array_equal(np.asarray(view), want)
    assert np.array_equal(store["tokens"][:], store.tokens()) and np.array_equal(
        store["doc"][1], store.doc(1)
    )
    assert np.array_equal(np.asarray(store["doc_pos"]), store.doc_pos())


def test_shape_dims_and_lazy_attributes(store):
    view = store["resid_post", 0]
    assert (
        view.shape == (4, 16, 128)
        and len(view) == 4
        and view.ndim == 3
        and view.dtype == np.float32
    )
    assert view.dims == ("row", "pos", "d_model") and view.chunks == (4, 16, 128)
    assert view.metadata.dimension_names == view.dims and isinstance(view.array, zarr.Array)
    assert "row=4, pos=16, d_model=128" in repr(view)
    # float32, the whole array uncompressed
    assert view.size == 4 * 16 * 128 and view.nbytes == 4 * view.size


@pytest.mark.parametrize(
    "index",
    [
        1,
        -1,
        np.int64(2),
        slice(None),
        slice(1, 3),
        slice(None, None, -2),
        slice(3, 1),
        slice(0, 4, 3),
        (1, 3),
        (slice(1, 3), -1),
        (-1, slice(None), 5),
        [3, 0, 0],
        np.array([2, -1]),
        np.array([True, False, True, False]),
        ([1, 2], slice(None, 4), [0, 1]),
        (1, slice(None), [0, 1]),
        ([[0, 1], [3, 3]], 2),
        Ellipsis,
        (Ellipsis, 0),
        (2, Ellipsis),
        (),
        np.array([], int),
    ],
)
def test_numpy_style_indexing(store, index):
    want = store.acts(HOOK)
    assert np.array_equal(store[HOOK][index], want[index])


@pytest.mark.parametrize(
    "index,match",
    [
        (4, "Row 4 is out of range for the 4 rows"),
        (-5, "Row -5 is out of range"),
        ([0, 4], "fall outside the 4 rows"),
        (np.array([True, False]), "must have 4 entries"),
        (1.5, "Rows must be an int, a slice"),
    ],
)
def test_bad_row_indexes(store, index, match):
    with pytest.raises(IndexError, match=match):
        store[HOOK][index]


@pytest.mark.parametrize(
    "key,match",
    [
        ("resid_post:3", "holds no array 'resid_post:3'"),
        (
            ("resid_post", 2),
            r"\(that is blocks.2.hook_resid_post, which this store does not hold\)",
        ),
        (("nonsense", 2), r"'nonsense' is not a site name"),
        ("blocks.0.hook_resid_pre", "holds no array"),
        ("mask", "a store of packed rows has no mask"),
        (3, "holds no array 3"),
    ],
)
def test_unknown_keys_list_what_the_store_holds(store, key, match):
    with pytest.raises(UnknownSiteError, match=match) as e:
        store[key]
    assert isinstance(e.value, KeyError)
    assert f"It holds the sites {HOOK} and the index arrays tokens, doc, doc_pos." in str(e.value)


def test_unfinished_store_raises_for_rows_not_done(unfinished):
    s = actstore.open(unfinished)
    # 2 rows per shard; killed before shard 1's done
    assert list(s.done) == [
        True,
        False,
        False,
        False,
    ]
    for key in ("resid_post:0", ("z", 1), "tokens"):
        view = s[key]
        done_rows = (
            s.tokens(slice(0, 2))
            if key == "tokens"
            else s.acts(view.name[len("acts/") :], slice(0, 2))
        )
        assert np.array_equal(view[0:2], done_rows) and np.array_equal(view[1], done_rows[1])
        assert np.array_equal(view[[1, 0]], view[0:2][::-1])
        for index, first in (
            (slice(None), 2),
            (2, 2),
            (slice(1, 3), 2),
            ([0, 7], 6),
            (-1, 6),
            ((Ellipsis, 0), 2),
            (slice(0, 8, 5), 4),
        ):
            with pytest.raises(
                RowsNotDoneError,
                match=rf"include rows not yet written \(first: {first}..{first + 1}\); "
                r"2 of 8 rows are done",
            ):
                view[index]
        with pytest.raises(
            RowsNotDoneError,
            match=r"the store is incomplete; finish it with `actstore verify \S+ "
            r"--repair` \(its own config\), or `actstore cache \S+ --model "
            r"actstore-demo .* --resume`",
        ):
            np.asarray(view)
    # the raw zarr array reads what is there: shard 1 was written (not done), 2 and 3 never were
    raw = zarr.open_group(str(unfinished), mode="r")["acts/blocks.0.hook_resid_post"]
    assert np.isfinite(raw[2:4]).all() and np.isnan(raw[4:8]).all()
