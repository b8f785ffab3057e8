"""The analyses take the model as an object in memory (a TransformerBridge) as well as
by name, with the same numbers, and check it is the store's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import actstore
from actstore.analysis import direct_logit_attribution, logit_lens, model_for, single_token
from actstore.errors import StoreMismatchError
from actstore.models import load_model

from .test_analysis import text_store  # noqa: F401  (the fixture)


def test_logit_lens_and_dla_take_a_bridge(text_store, tiny_model, bridge):  # noqa: F811
    by_name = model_for(text_store, device="cpu")
    rows = [0, 3]
    lens = logit_lens(text_store, bridge, rows, k=3, progress=False)
    want = logit_lens(text_store, by_name, rows, k=3, progress=False)
    for field in ("target_prob", "target_rank", "topk_tokens", "topk_probs"):
        np.testing.assert_array_equal(getattr(lens, field), getattr(want, field), err_msg=field)
    # (encode() puts BOS first: [0] was BOS for both, a difference of zeros, now refused)
    t, w = single_token(by_name.tokenizer, " the"), single_token(by_name.tokenizer, " a")
    dla = direct_logit_attribution(text_store, bridge, rows, t, w, progress=False)
    ref = direct_logit_attribution(text_store, tiny_model, rows, t, w, progress=False)  # by name
    np.testing.assert_array_equal(dla.heads, ref.heads)
    np.testing.assert_array_equal(dla.mlp, ref.mlp)
    assert model_for(text_store, bridge).info.to_dict()["source"] == "in-memory"


def test_another_bridge_is_refused(text_store, tiny_model):  # noqa: F811
    other = load_model(tiny_model, "float32", "cpu").bridge
    with torch.no_grad():
        other.W_U[0, 0] += 0.01  # the unembedding the lens reads
    with pytest.raises(StoreMismatchError, match="model.fingerprint"):
        logit_lens(text_store, other, [0], progress=False)
    with pytest.raises(StoreMismatchError, match="model.fingerprint"):
        direct_logit_attribution(text_store, other, [0], 5, progress=False)


def test_a_store_from_a_model_in_memory_names_the_fix(tmp_path, bridge):
    store = actstore.cache(
        out=str(tmp_path / "s.zarr"),
        model=bridge,
        dataset=["a b c d e f"] * 4,
        seq_len=4,
        sites="resid_post:2",
        progress=False,
    )
    assert model_for(store, bridge).info.fingerprint == store.metadata["model"]["fingerprint"]
    with pytest.raises(StoreMismatchError, match="cached from a model in memory: pass that object"):
        model_for(store, "actstore-demo", device="cpu")
