"""A SAELens SAE trains from a store with SAELens's own SAETrainer and no model: its
reconstruction error on the store's tokens falls, and the weights equal those of the
same trainer fed the same activations read independently (store[...]).

Runs where sae-lens is installed (bash scripts/fidelity_matrix.sh tl3); skipped elsewhere."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

pytest.importorskip(
    "sae_lens",
    reason="needs sae-lens (pip install sae-lens, with transformer-lens 3.x: "
    "bash scripts/fidelity_matrix.sh tl3 runs it)",
)
from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig  # noqa: E402
from sae_lens.config import SAETrainerConfig  # noqa: E402
from sae_lens.training.sae_trainer import SAETrainer  # noqa: E402

from actstore.errors import ConfigError  # noqa: E402
from actstore.integrations import saelens  # noqa: E402

from .test_saelens_provider import RESID, reference  # noqa: E402

BATCH, STEPS = 100, 30  # 600 tokens an epoch: 5 epochs


def new_sae(d_in: int = 128) -> StandardTrainingSAE:
    torch.manual_seed(0)
    return StandardTrainingSAE(
        StandardTrainingSAEConfig(d_in=d_in, d_sae=256, l1_coefficient=1e-3, device="cpu")
    )


def mse(sae: StandardTrainingSAE, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((sae.decode(sae.encode(x)) - x) ** 2).sum(-1).mean())


def test_sae_trains_from_the_store_and_its_error_falls(store):
    x = torch.from_numpy(reference(store, RESID))
    sae = new_sae()
    before = mse(sae, x)
    trainer = saelens.sae_trainer(
        store, "resid_post:1", sae, training_tokens=STEPS * BATCH, batch_size=BATCH, lr=3e-3, seed=0
    )
    trained = trainer.fit()
    assert trainer.n_training_steps == STEPS and trainer.n_training_samples == STEPS * BATCH
    assert trained.cfg.metadata.hook_name == RESID and trained.cfg.metadata.context_size == 16
    after = mse(trained, x)
    assert after < 0.5 * before, (before, after)


def test_weights_equal_the_trainer_fed_directly(store):
    """In store order (no shuffle), the adapter's SAE equals SAETrainer fed tensors read with store[...]."""
    sae = saelens.sae_trainer(
        store,
        "resid_post:1",
        new_sae(),
        training_tokens=STEPS * BATCH,
        batch_size=BATCH,
        lr=3e-3,
        loader_options={"shuffle": False},
    ).fit()
    x = torch.from_numpy(reference(store, RESID))
    ref_batches = itertools.cycle(list(x[: len(x) // BATCH * BATCH].split(BATCH)))
    cfg = SAETrainerConfig(
        total_training_samples=STEPS * BATCH,
        train_batch_size_samples=BATCH,
        lr=3e-3,
        lr_end=3e-4,
        device="cpu",
    )
    ref = SAETrainer(cfg=cfg, sae=new_sae(), data_provider=ref_batches).fit()
    spread = ref.W_enc.detach().std()
    assert spread > 1e-2
    for name, p in ref.state_dict().items():
        torch.testing.assert_close(sae.state_dict()[name], p, rtol=0, atol=1e-6 * float(spread))


def test_sae_of_another_width_or_hook_is_refused(store):
    with pytest.raises(ConfigError, match="d_in is 64 but blocks.1.hook_resid_post holds 128"):
        saelens.sae_trainer(store, "resid_post:1", new_sae(64), training_tokens=BATCH)
    sae = new_sae()
    sae.cfg.metadata.hook_name = "blocks.3.hook_resid_post"
    with pytest.raises(ConfigError, match="names hook blocks.3.hook_resid_post but the site is"):
        saelens.sae_trainer(store, "resid_post:1", sae, training_tokens=BATCH)


def test_half_store_feeds_a_float32_sae(half_store):
    sae = new_sae()
    trainer = saelens.sae_trainer(
        half_store,
        "resid_post:1",
        sae,
        training_tokens=2 * BATCH,
        batch_size=BATCH,
        loader_options={"shuffle": False},
    )
    batch = next(trainer.data_provider)
    assert batch.dtype == torch.float32
    np.testing.assert_array_equal(
        batch.numpy(), reference(half_store, RESID)[:BATCH].astype(np.float32)
    )
    trainer.fit()  # float16 activations never meet the float32 SAE's weights unconverted
