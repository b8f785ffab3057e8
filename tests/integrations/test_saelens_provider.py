"""The SAELens data providers (plain torch iterators: no sae_lens needed) yield the
store's exact activations, every kept token once per epoch, in the store's dtype unless
asked otherwise, and refuse what an SAE cannot train on before reading anything."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from actstore.errors import ConfigError, MissingDependencyError
from actstore.integrations import saelens

from .conftest import ROWS, L

RESID, Z = "blocks.1.hook_resid_post", "blocks.1.attn.hook_z"


def reference(store, hook: str) -> np.ndarray:
    """(token, d_in): every row's tokens after BOS, row-major, read with store[...]."""
    x = np.asarray(store[hook])[:, 1:]  # (row, pos, *feature), BOS dropped
    return x.reshape(x.shape[0] * x.shape[1], -1)


def sorted_rows(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T[::-1])]


def test_in_order_batches_equal_the_store(store):
    ref = reference(store, RESID)
    assert ref.std() > 0.1  # the comparison is not between near-constant values
    got = list(saelens.data_provider(store, "resid_post:1", 64, shuffle=False, epochs=1))
    assert all(b.shape == (64, 128) and b.dtype == torch.float32 for b in got)
    n = len(ref) // 64 * 64  # whole batches only
    assert len(got) == len(ref) // 64
    np.testing.assert_array_equal(torch.cat(got).numpy(), ref[:n])


def test_shuffled_epochs_are_permutations_in_new_orders(store):
    # hook_z: (head, d_head) flattened to n_heads * d_head, as SAELens's hook_z SAEs
    ref = reference(store, Z)
    assert ref.shape[1] == 128
    assert len(ref) % 50 == 0  # so that an epoch is whole batches
    stream = saelens.data_provider(store, "z:1", 50, seed=3)  # endless
    epochs = [torch.cat([next(stream) for _ in range(len(ref) // 50)]).numpy() for _ in range(2)]
    for e in epochs:  # every token of the store once (as a multiset: repeated text repeats values)
        np.testing.assert_array_equal(sorted_rows(e), sorted_rows(ref))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[0], ref[: len(epochs[0])])


def test_a_resumed_provider_continues_at_the_exact_next_batch(store):
    """Stopped in its second epoch, saved, and resumed by a new provider: the batches that
    follow are the uninterrupted run's, through the next epoch boundary."""
    n_per_epoch = len(reference(store, RESID)) // 50
    whole = saelens.data_provider(store, "resid_post:1", 50, seed=5)
    expect = [next(whole) for _ in range(3 * n_per_epoch)]
    first = saelens.data_provider(store, "resid_post:1", 50, seed=5)
    k = n_per_epoch + n_per_epoch // 2  # mid-way through epoch 1
    for _ in range(k):
        next(first)
    state = first.state_dict()
    resumed = saelens.data_provider(store, "resid_post:1", 50, seed=5)
    resumed.load_state_dict(state)
    rest = [next(resumed) for _ in range(3 * n_per_epoch - k)]
    assert rest[0].std() > 0.1
    for a, b in zip(rest, expect[k:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="before taking its first batch"):
        first.load_state_dict(state)


def test_float16_store_keeps_its_dtype_unless_asked(half_store):
    ref = reference(half_store, RESID)
    assert ref.dtype == np.float16
    (b,) = list(
        saelens.data_provider(
            Path(half_store.path), "resid_post:1", len(ref), shuffle=False, epochs=1
        )
    )
    assert b.dtype == torch.float16
    np.testing.assert_array_equal(b.numpy(), ref)
    (b32,) = list(
        saelens.data_provider(
            half_store, "resid_post:1", len(ref), shuffle=False, epochs=1, dtype=torch.float32
        )
    )
    assert b32.dtype == torch.float32
    np.testing.assert_array_equal(b32.numpy(), ref.astype(np.float32))


def test_multi_hook_batches_hold_the_same_tokens(store):
    (b,) = list(
        saelens.multi_hook_data_provider(
            store, "resid_post:1,z:1", ROWS * (L - 1), shuffle=True, seed=1, epochs=1
        )
    )
    assert set(b) == {RESID, Z}
    order = np.lexsort(b[RESID].numpy().T[::-1])
    ref_r, ref_z = reference(store, RESID), reference(store, Z)
    ref_order = np.lexsort(ref_r.T[::-1])
    np.testing.assert_array_equal(b[RESID].numpy()[order], ref_r[ref_order])
    np.testing.assert_array_equal(b[Z].numpy()[order], ref_z[ref_order])  # the pairs stay together


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s: saelens.data_provider(s, "pattern:1", 8), "not one vector per token"),
        (lambda s: saelens.data_provider(s, "resid_post:1,z:1", 8), "an SAE trains on one"),
        (
            lambda s: saelens.data_provider(s, "resid_post:1", 8, d_in=768),
            "d_in is 768 but .* holds 128",
        ),
        (lambda s: saelens.data_provider(s, "resid_post:1", 10**6), "fewer than one batch"),
        (
            lambda s: saelens.data_provider(s, "resid_post:1", 8, epochs=0),
            "epochs must be at least 1",
        ),
        (
            lambda s: saelens.multi_hook_data_provider(s, "resid_post:1", 8, d_in={Z: 128}),
            "do not select",
        ),
    ],
)
def test_bad_input_is_refused_before_reading(store, call, match):
    with pytest.raises(ConfigError, match=match):
        call(store)


def test_sae_trainer_without_sae_lens_names_the_install(store, monkeypatch):
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # import sae_lens raises ImportError
    with pytest.raises(MissingDependencyError, match="pip install sae-lens"):
        saelens.sae_trainer(store, "resid_post:1", sae=None, training_tokens=64)
