"""The loader as a training dataset: ranks share the tokens without overlap, a saved
state resumes at the exact next batch, sites stay aligned token by token, and the
normalisation equals a direct numpy computation over the store."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import actstore
from actstore.errors import ConfigError
from actstore.store.loader import make_dataloader

from .conftest import DEMO

L = 16
N_ROWS = 37
SITES = "resid_mid:1,mlp_out:1,resid_post:0-1,z:1"
HOOKS = [
    "blocks.1.hook_resid_mid",
    "blocks.1.hook_mlp_out",
    "blocks.0.hook_resid_post",
    "blocks.1.hook_resid_post",
    "blocks.1.attn.hook_z",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset") / "s.zarr"
    return actstore.cache(
        out=str(out),
        sites=SITES,
        seq_len=L,
        n_rows=N_ROWS,
        batch_size=4,
        rows_per_chunk=4,
        rows_per_shard=8,
        codec="zstd:1",
        **DEMO,
    )


def cat(batches):
    return {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}


def kept():
    keep = np.ones((N_ROWS, L), bool)
    keep[:, 0] = False  # BOS
    return keep


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_share_every_token_once(store, world):
    seen = np.zeros((N_ROWS, L), int)
    for rank in range(world):
        loader = store.loader(SITES, batch_size=24, seed=3, rank=rank, world_size=world)
        # of epoch 0: the ranks' shares change with the epoch
        n_batches, n_tokens = (
            len(loader),
            loader.n_tokens,
        )
        batches = list(loader)
        assert len(batches) == n_batches and len(cat(batches)["row"]) == n_tokens
        got = cat(batches)
        np.add.at(seen, (got["row"], got["pos"]), 1)
        assert list(loader.plan().rank_units()) == list(loader.plan().order()[rank::world])
        again = cat(list(store.loader(SITES, batch_size=24, seed=3, rank=rank, world_size=world)))
        # deterministic
        assert np.array_equal(again["row"], got["row"]) and np.array_equal(again["pos"], got["pos"])
    assert np.array_equal(seen, kept().astype(int))  # disjoint and covering


def test_even_batches_drop_only_whole_rank_tails(store):
    loaders = [store.loader(SITES, batch_size=50, seed=0, rank=r, world_size=3) for r in range(3)]
    counts = [lo.plan().rank_tokens() for lo in loaders]
    assert len(set(counts)) > 1  # the chunks divide unevenly: 37 rows in chunks of 4
    even = [
        store.loader(SITES, batch_size=50, seed=0, rank=r, world_size=3, even_batches=True)
        for r in range(3)
    ]
    assert {len(lo) for lo in even} == {min(counts) // 50}
    for lo, ev in zip(loaders, even):
        full, cut = list(lo), list(ev)
        assert len(cut) == len(ev) and all(len(b["row"]) == 50 for b in cut)
        # a prefix of the uneven batches
        assert all(torch.equal(a["row"], b["row"]) for a, b in zip(full, cut))


def test_sites_aligned_token_by_token(store):
    """A transcoder's input and target (resid_mid, mlp_out of layer 1) and a crosscoder's
    site across layers come from the same (row, pos) in every batch."""
    acts = {h: store.acts(h) for h in HOOKS}
    assert np.abs(acts[HOOKS[1]]).std() > 0.1  # the sites differ, so a misalignment would show
    for b in store.loader(SITES, batch_size=32, seed=1, world_size=2, rank=1):
        r, p = b["row"].numpy(), b["pos"].numpy()
        for h in HOOKS:
            assert np.array_equal(b[h].numpy(), acts[h][r, p]), h


@pytest.mark.parametrize("world,crossing", [(1, False), (1, True), (2, False), (2, True)])
def test_resume_at_the_exact_next_batch(store, world, crossing):
    """Stop after a few batches (of epoch 0, or of epoch 1 when ``crossing``), save, load the
    state into a new loader: the rest equals the uninterrupted run."""

    def make(rank):
        return store.loader(
            SITES, batch_size=20, seed=7, rank=rank, world_size=world, buffer_tokens=60
        )

    for rank in range(world):
        ref = make(rank)
        n0 = len(ref)
        stop = n0 + 3 if crossing else 5
        assert n0 > 5
        uninterrupted = list(ref) + list(ref)  # epochs 0 and 1: a finished epoch moves on
        assert ref.epoch == 2 and not torch.equal(uninterrupted[0]["row"], uninterrupted[n0]["row"])
        first = make(rank)
        it, got = iter(first), []
        while len(got) < stop:
            b = next(it, None)
            if b is None:  # end of epoch 0
                it = iter(first)
                continue
            got.append(b)
        state = first.state_dict()
        assert state["epoch"] == stop // n0 and state["batches"] == stop % n0
        resumed = make(rank)
        resumed.load_state_dict(state)
        rest = list(resumed) + (list(resumed) if state["epoch"] == 0 else [])
        assert len(got) + len(rest) == len(uninterrupted)
        for a, b in zip(got + rest, uninterrupted):
            assert all(torch.equal(a[k], b[k]) for k in b)


def test_set_epoch_and_state_checks(store):
    lo = store.loader(SITES, batch_size=20, seed=7)
    first = next(iter(lo))
    lo.set_epoch(0)  # the current epoch: keeps the position
    assert lo.state_dict()["batches"] == 1
    lo.set_epoch(1)
    assert lo.state_dict()["batches"] == 0
    lo.set_epoch(0)
    assert torch.equal(next(iter(lo))["row"], first["row"])
    with pytest.raises(ConfigError, match=r"saved with world_size=2, this loader has world_size=1"):
        lo.load_state_dict(
            store.loader(SITES, batch_size=20, seed=7, rank=0, world_size=2).state_dict()
        )
    with pytest.raises(ConfigError, match=r"saved with batch_size=21"):
        lo.load_state_dict(store.loader(SITES, batch_size=21, seed=7).state_dict())


def test_rank_from_the_environment_and_bad_ranks(store, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    lo = store.loader(SITES, batch_size=20)
    assert (lo.rank, lo.world_size) == (1, 2)
    assert (
        store.loader(SITES, batch_size=20, rank=0, world_size=1).world_size
    ) == 1  # explicit wins
    with pytest.raises(ConfigError, match=r"rank must be in 0..world_size-1"):
        store.loader(SITES, batch_size=20, rank=2, world_size=2)
    with pytest.raises(ConfigError, match=r"Pass rank= and world_size= together"):
        store.loader(SITES, batch_size=20, rank=1)


def test_dataloader_factory_and_worker_processes(store):
    dl = store.dataloader(SITES, batch_size=30, seed=2)
    direct = list(store.loader(SITES, batch_size=30, seed=2))
    via = list(dl)
    assert len(dl) == len(via) == len(direct)
    assert all(torch.equal(a[h], b[h]) for a, b in zip(via, direct) for h in HOOKS)
    dl2 = make_dataloader(store, SITES, batch_size=30, seed=2)
    dl2.load_state_dict({**dl.state_dict(), "epoch": 0, "batches": 2})
    assert torch.equal(next(iter(dl2))["row"], direct[2]["row"])
    with pytest.raises(ConfigError, match=r"use it in a DataLoader with num_workers=0"):
        next(iter(DataLoader(store.loader(SITES, batch_size=30), batch_size=None, num_workers=1)))


def direct_norm(store, hook, skip_bos):
    x = store.acts(hook).astype(np.float64)
    x = x[:, 1:] if skip_bos else x
    x = x.reshape(-1, int(np.prod(x.shape[2:])))  # (token, feature): z's (head, d_head) flattened
    mean = x.mean(0)
    return x, mean, np.sqrt(x.shape[1]) / np.linalg.norm(x - mean, axis=1).mean()


@pytest.mark.parametrize("skip_bos", [True, False])  # False: the mean is the store's own stats
def test_normalisation_equals_numpy(store, skip_bos):
    lo = store.loader(
        SITES, batch_size=64, seed=0, center=True, scale=True, skip_bos=skip_bos, progress=False
    )
    got = cat(list(lo))
    for h in HOOKS:
        x, mean, factor = direct_norm(store, h, skip_bos)
        norms = np.linalg.norm(x - mean, axis=1)
        # the scaling does something (tolerance: 1e-9)
        assert norms.std() > 0.05 * norms.mean() and abs(factor - 1) > 0.01
        np.testing.assert_allclose(
            lo.norm[h].mean.reshape(-1), mean, rtol=1e-9, atol=1e-9 * np.abs(mean).max()
        )
        assert lo.norm[h].scale == pytest.approx(factor, rel=1e-9)
        raw = store.acts(h)[got["row"], got["pos"]].astype(np.float64)
        want = (raw - lo.norm[h].mean) * factor
        np.testing.assert_allclose(got[h], want, rtol=0, atol=1e-5 * np.abs(want).max())
        flat = got[h].reshape(len(got[h]), -1).astype(np.float64)
        assert np.linalg.norm(flat, axis=1).mean() == pytest.approx(np.sqrt(x.shape[1]), rel=1e-5)
        np.testing.assert_allclose(
            lo.norm[h].inverse(got[h].astype(np.float64)), raw, atol=1e-5 * np.abs(raw).max()
        )
    only = store.loader(
        HOOKS[0], batch_size=64, scale=True, skip_bos=skip_bos, progress=False
    ).norm[HOOKS[0]]
    x, _, _ = direct_norm(store, HOOKS[0], skip_bos)
    assert not only.mean.any() and only.scale == pytest.approx(
        np.sqrt(x.shape[1]) / np.linalg.norm(x, axis=1).mean(), rel=1e-9
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_pinned_copies_to_the_gpu(store):
    cpu = list(store.loader(SITES, batch_size=30, seed=4, center=True, progress=False))
    lo = store.loader(SITES, batch_size=30, seed=4, center=True, progress=False, device="cuda")
    gpu = list(lo)
    assert lo.pin and gpu[0][HOOKS[0]].is_cuda
    for a, b in zip(cpu, gpu):
        assert all(torch.equal(a[k], b[k].cpu()) for k in a)
