"""scripts/train_sae.py's own checks, beside the command-line matrix (tests/cli/test_fuzz_train_sae.py):
the batch-size bound holds on every rank in every epoch, saves are whole or absent, and the
checkpoint and the SAE file record the configuration that a resume is checked against."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import actstore
from actstore.errors import ConfigError
from actstore.store.epoch import EpochPlan

from .conftest import DEMO


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """6 chunks of 2 rows x 15 tokens (BOS skipped): 180 tokens."""
    out = tmp_path_factory.mktemp("checks") / "s.zarr"
    actstore.cache(
        out=str(out),
        sites="resid_post:1",
        seq_len=16,
        n_rows=12,
        batch_size=4,
        rows_per_chunk=2,
        rows_per_shard=4,
        **DEMO,
    )
    return str(out)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_min_rank_tokens_bounds_every_rank_in_every_epoch(train_sae, world):
    rng = np.random.default_rng(world)
    for trial in range(5):
        tokens = rng.integers(0, 50, size=int(rng.integers(world, 20)))
        bound = train_sae.min_rank_tokens(tokens, world)
        shares = [
            EpochPlan(tokens, seed=trial, epoch=e, rank=0, world=world, window_units=2).rank_tokens(
                r
            )
            for e in range(20)
            for r in range(world)
        ]
        assert min(shares) >= bound
        if world == 1:
            assert bound == tokens.sum()


def test_batch_size_check_names_the_poorest_rank_and_leaves_no_empty_epoch(train_sae, store):
    s = actstore.open(store)
    loaders = [
        s.loader("resid_post:1", batch_size=30, rank=r, world_size=4, even_batches=True)
        for r in range(4)
    ]
    with pytest.raises(
        ConfigError,
        match=r"--batch-size 31 is more than the 30 tokens each of the 4 processes is "
        r"sure to get per epoch .*pass --batch-size 30 or less \(or run fewer",
    ):
        train_sae.check_batches(loaders[0], 31, 4, store)
    # accepted: then every epoch has a step on every rank
    train_sae.check_batches(loaders[0], 30, 4, store)
    for epoch in range(8):
        for loader in loaders:
            loader.set_epoch(epoch)
            assert len(loader) >= 1


def test_save_is_whole_or_absent(train_sae, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    train_sae.save({"step": 1}, str(path))
    kept = path.read_bytes()

    def dies(obj, f):  # a write that fails half-way (a full disk, a kill)
        Path(f).write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(OSError):
        train_sae.save({"step": 2}, str(path))
    assert path.read_bytes() == kept and os.listdir(tmp_path) == ["ckpt.pt"]


def test_checkpoint_and_sae_record_the_configuration(train_sae, store, tmp_path):
    ckpt, out = tmp_path / "ckpt.pt", tmp_path / "sae.pt"
    argv = [
        store,
        "--site",
        "resid_post:1",
        "--k",
        "4",
        "--expansion",
        "2",
        "--batch-size",
        "32",
        "--lr",
        "0.002",
        "--seed",
        "3",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
    ]
    assert train_sae.main(argv) == 0
    meta = actstore.open(store).meta
    config = torch.load(ckpt, weights_only=True)["config"]
    assert {
        k: config[k]
        for k in (
            "hook",
            "d_in",
            "expansion",
            "d_sae",
            "k",
            "batch_size",
            "lr",
            "seed",
            "world_size",
        )
    } == {
        "hook": "blocks.1.hook_resid_post",
        "d_in": 128,
        "expansion": 2,
        "d_sae": 256,
        "k": 4,
        "batch_size": 32,
        "lr": 0.002,
        "seed": 3,
        "world_size": 1,
    }
    assert config["store"]["fingerprint"] == meta.model.fingerprint
    assert (
        config["store"]["layout"] == meta.layout.to_dict()
        and config["store"]["corpus"] == meta.corpus.to_dict()
    )
    saved = torch.load(out, weights_only=True)
    assert saved["hook"] == "blocks.1.hook_resid_post" and saved["config"] == {**config, "steps": 2}
    assert saved["sae"]["W_enc"].shape == (128, 256) and saved["scale"] > 0
