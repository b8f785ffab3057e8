"""Caching on every family: each site kind the store holds equals TransformerLens's
``run_with_cache`` on the same tokens, and the store's shapes are the hooks' (grouped-query
keys and values included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import actstore
from actstore.errors import UnknownSiteError
from actstore.random_models import FAMILIES

from ..conftest import DOCS

GQA = ("llama", "gemma2", "qwen2", "mistral")
KINDS = [
    "resid_pre",
    "resid_mid",
    "resid_post",
    "attn_out",
    "mlp_out",
    "z",
    "q",
    "k",
    "v",
    "pattern",
    "attn_scores",
    "mlp_pre",
    "mlp_post",
]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_site_kind_equals_run_with_cache(family_model, family, tmp_path):
    from transformer_lens.model_bridge import TransformerBridge

    model = family_model(family)
    # parallel: no mid-block residual
    kinds = [k for k in KINDS if not (family == "gpt_neox" and k == "resid_mid")]
    bridge = TransformerBridge.boot_transformers(model, device="cpu", dtype=torch.float32)
    store = actstore.cache(
        out=str(tmp_path / "s.zarr"),
        model=bridge,
        dataset=DOCS,
        seq_len=16,
        n_rows=4,
        batch_size=2,
        sites=",".join(f"{k}:all" for k in kinds),
        progress=False,
    )
    with torch.no_grad():
        _, cache = bridge.run_with_cache(torch.from_numpy(store.tokens()).long())
    checked = 0
    for hook in store.sites:
        want = cache[hook].numpy()
        # masked scores: -inf (or the dtype's min) where a query cannot look
        if "hook_attn_scores" in hook:
            seen = want > -1e30
            got = store.acts(hook)
            assert np.array_equal(got > -1e30, seen), hook
            want, got = want[seen], got[seen]
        else:
            got = store.acts(hook)
        assert got.shape == want.shape, (hook, got.shape, want.shape)
        spread = np.ptp(want)
        assert spread > 0.1, (hook, spread)
        # batches of 2 against one of 4: float rounding
        assert np.abs(got - want).max() <= 1e-6 * spread, hook
        checked += 1
    assert checked == len(kinds) * 2
    kv = store.meta.model.n_kv_heads
    assert (kv, store.acts("blocks.0.attn.hook_k").shape[2]) == (
        (2, 2) if family in GQA else (None, 4)
    )


def test_grouped_query_heads_are_named_and_bounded(family_model, tmp_path):
    """In a GQA model a key/value site's heads are its key/value heads: 'k:1.1' selects
    the second of 2, 'k:1.3' is refused, naming the range; a query site keeps all 4."""
    store = actstore.cache(
        out=str(tmp_path / "s.zarr"),
        model=family_model("llama"),
        dataset=DOCS,
        seq_len=8,
        n_rows=2,
        sites="k:1.1,q:1.3",
        progress=False,
    )
    assert store.acts("blocks.1.attn.hook_k").shape == (2, 8, 1, 16)
    assert store.acts("blocks.1.attn.hook_q").shape == (2, 8, 1, 16)
    with pytest.raises(
        UnknownSiteError,
        match=r"'k:1.3': head 3 is out of range; this model has key/value heads 0..1",
    ):
        actstore.cache(
            out=str(tmp_path / "t.zarr"),
            model=family_model("llama"),
            dataset=DOCS,
            seq_len=8,
            n_rows=2,
            sites="k:1.3",
            progress=False,
        )
    assert not (tmp_path / "t.zarr").exists()


def test_a_parallel_block_has_no_mid_residual(family_model, tmp_path):
    with pytest.raises(UnknownSiteError, match="Unknown site 'blocks.0.hook_resid_mid'"):
        actstore.cache(
            out=str(tmp_path / "s.zarr"),
            model=family_model("gpt_neox"),
            dataset=DOCS,
            seq_len=8,
            n_rows=2,
            sites="resid_mid:all",
            progress=False,
        )
