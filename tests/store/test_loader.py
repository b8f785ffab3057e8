"""The training loader yields every kept token exactly once per epoch, with the store's
exact activations, in an order fixed by the seed and the epoch alone."""

import shutil

import numpy as np
import pytest
import torch
import zarr

import actstore
from actstore.errors import ConfigError, RowsNotDoneError

from ..conftest import DOCS

L = 16
HOOKS = ["blocks.1.attn.hook_z", "blocks.1.hook_resid_post"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("loader") / "s.zarr"
    return actstore.cache(
        out=str(out),
        model=tiny_model,
        dataset=DOCS,
        sites="resid_post:1,z:1,pattern:1",
        seq_len=L,
        n_rows=37,
        batch_size=4,
        rows_per_chunk=4,
        rows_per_shard=8,
        codec="zstd:1",
        progress=False,
    )


@pytest.fixture(scope="module")
def doc_store(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("loader") / "d.zarr"
    return actstore.cache(
        out=str(out),
        model=tiny_model,
        dataset=DOCS,
        sites="resid_post:1",
        seq_len=L,
        packing="document",
        batch_size=5,
        progress=False,
    )


def epoch(loader):
    batches = list(loader)
    return batches, {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_kept_token_once_with_exact_values(store, shuffle):
    loader = store.loader("resid_post:1,z:1", batch_size=24, shuffle=shuffle, seed=5)
    batches, got = epoch(loader)
    keep = np.ones((37, L), bool)
    keep[:, 0] = False  # BOS
    r, p = np.nonzero(keep)
    assert len(got["row"]) == keep.sum() == loader.n_tokens
    order = np.lexsort((got["pos"], got["row"]))
    assert np.array_equal(got["row"][order], r) and np.array_equal(got["pos"][order], p)
    for hook in HOOKS:
        assert np.array_equal(got[hook], store.acts(hook)[got["row"], got["pos"]]), hook
    assert [len(b["row"]) for b in batches[:-1]] == [24] * (len(batches) - 1) and 0 < len(
        batches[-1]["row"]
    ) <= 24
    assert len(batches) == len(loader)
    sequential = np.array_equal(got["row"] * L + got["pos"], r * L + p)
    assert sequential != shuffle


def test_shuffle_mixes_chunks(store):
    batches, got = epoch(store.loader("resid_post:1", batch_size=32, seed=0))
    first_chunks = np.unique(batches[0]["row"].numpy() // store.layout.rows_per_chunk)
    assert len(first_chunks) >= 4  # one batch draws from several chunks
    # positions within a batch are not in store order
    assert not np.all(np.diff(batches[0]["row"].numpy() * L + batches[0]["pos"].numpy()) > 0)


def test_deterministic_for_a_seed_whatever_the_workers(store):
    a = epoch(store.loader("resid_post:1", batch_size=20, seed=1, num_workers=1))[1]
    b = epoch(store.loader("resid_post:1", batch_size=20, seed=1, num_workers=4, prefetch=3))[1]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = epoch(store.loader("resid_post:1", batch_size=20, seed=2))[1]
    d = epoch(store.loader("resid_post:1", batch_size=20, seed=1, epoch=1))[1]
    assert not np.array_equal(a["row"], c["row"]) and not np.array_equal(a["row"], d["row"])
    loader = store.loader("resid_post:1", batch_size=20, seed=1)
    loader.set_epoch(1)
    assert np.array_equal(epoch(loader)[1]["row"], d["row"])


def test_bos_padding_drop_last_and_dtype(doc_store):
    mask = doc_store.mask()
    assert not mask.all()
    _, got = epoch(doc_store.loader("resid_post:1", batch_size=7, seed=0))
    assert (
        len(got["row"]) == mask[:, 1:].sum()
        and mask[got["row"], got["pos"]].all()
        and (got["pos"] > 0).all()
    )
    _, with_bos = epoch(doc_store.loader("resid_post:1", batch_size=7, skip_bos=False))
    assert len(with_bos["row"]) == mask.sum()
    _, everything = epoch(
        doc_store.loader("resid_post:1", batch_size=7, skip_bos=False, skip_padding=False)
    )
    assert len(everything["row"]) == mask.size
    loader = doc_store.loader("resid_post:1", batch_size=7, drop_last=True, dtype=torch.float16)
    batches = list(loader)
    assert len(batches) == len(loader) == mask[:, 1:].sum() // 7
    assert all(b["blocks.1.hook_resid_post"].shape == (7, 64) for b in batches)
    assert (
        batches[0]["blocks.1.hook_resid_post"].dtype == torch.float16
        and batches[0]["row"].dtype == torch.int64
    )


def test_bad_input(store, tmp_path):
    with pytest.raises(ConfigError, match=r"not one vector per token"):
        store.loader("pattern:1", batch_size=8)
    with pytest.raises(ConfigError, match=r"batch_size must be a positive integer; got 0"):
        store.loader("resid_post:1", batch_size=0)
    copy = tmp_path / "partial.zarr"
    shutil.copytree(store.path, copy)
    zarr.open_group(str(copy), mode="r+")["done"][2] = (
        False  # shard 2 (rows 16..23) not written yet
    )
    with pytest.raises(RowsNotDoneError, match=r"rows not yet written \(first: 16..23\)"):
        actstore.ActivationStore.open(copy).loader("resid_post:1", batch_size=8)
    assert sum(
        len(b["row"])
        for b in actstore.ActivationStore.open(copy).loader(
            "resid_post:1", batch_size=8, rows=slice(0, 16)
        )
    ) == 16 * (L - 1)


def test_even_batches_drop_exactly_the_rest_of_each_share(store):
    """More ranks than chunks (37 rows in 10 chunks, 12 ranks): single rows are dealt, every
    rank gets work, and each yields n = min(share // batch_size) batches, dropping the rest."""
    world, bs = 12, 10
    plain = [
        store.loader("resid_post:1", batch_size=1, rank=r, world_size=world) for r in range(world)
    ]
    shares = [lo.n_tokens for lo in plain]
    assert len(plain[0].units) == 37 and min(shares) == 3 * (L - 1) and sum(shares) == 37 * (L - 1)
    even = [
        store.loader("resid_post:1", batch_size=bs, rank=r, world_size=world, even_batches=True)
        for r in range(world)
    ]
    n = min(shares) // bs
    for lo, share in zip(even, shares):
        assert (
            len(lo) == n and lo.n_tokens == n * bs and lo.n_dropped == share - n * bs < (L - 1) + bs
        )
        assert sum(len(b["row"]) for b in lo) == n * bs


def test_state_carries_the_store_and_the_order(store):
    lo = store.loader("resid_post:1", batch_size=8, rows=slice(0, 20, 3), seed=2)
    state = lo.state_dict()
    assert state["store"]["fingerprint"] == store.meta.model.fingerprint
    assert state["store"]["layout"]["n_rows"] == 37 and state["sites"] == [
        "blocks.1.hook_resid_post"
    ]
    assert state["rows"][:3] == [0, 19, 7] and state["seed"] == 2
    with pytest.raises(ConfigError, match=r"saved with seed=2, this loader has seed=0"):
        store.loader("resid_post:1", batch_size=8, rows=slice(0, 20, 3)).load_state_dict(state)
