"""The random models of every family load offline through TransformerBridge, compute
what the plain transformers model computes, and have what sets their family apart."""

from __future__ import annotations

import pytest
import torch

from actstore.errors import ConfigError
from actstore.random_models import FAMILIES, family_config


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bridge_matches_the_plain_model(family_model, family: str) -> None:
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(
        family_model(family), device="cpu", dtype=torch.float32
    )
    tokens = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = bridge(tokens)
        plain = bridge.original_model(tokens).logits
    assert ours.std() > 0.5  # the large init: logits spread widely
    assert (ours - plain).abs().max() <= 1e-5 * ours.std()


def test_family_traits() -> None:
    assert family_config("gpt_neox").rope_parameters["partial_rotary_factor"] == 0.25
    assert family_config("llama").num_key_value_heads < family_config("llama").num_attention_heads
    gemma = family_config("gemma2")
    assert (
        gemma.final_logit_softcapping
        and gemma.attn_logit_softcapping
        and "sliding_attention" in gemma.layer_types
    )
    assert (
        family_config("mistral").sliding_window < family_config("mistral").max_position_embeddings
    )
    assert family_config("llama", hidden_size=128).hidden_size == 128
    with pytest.raises(
        ConfigError, match="unknown model family 'bert'; the families are gpt2, gpt_neox"
    ):
        family_config("bert")
