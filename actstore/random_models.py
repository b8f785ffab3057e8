"""Randomly initialised small models of every family actstore serves, saved with the
bundled GPT-2 tokenizer so that TransformerBridge loads them offline: the fixtures of
the families' fidelity tests, and the real shapes of the benchmarks.

Each family is described once, in :data:`FAMILIES`: its transformers config class, the
model class, and a tiny default config (2 layers, d_model 64) that exercises what sets
the family apart (rotary positions, grouped-query attention, gated MLPs, sliding-window
layers, soft-capping, parallel attention and MLP). ``build_random_model(family, folder,
**overrides)`` saves one; overrides are the config class's keyword arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["FAMILIES", "build_random_model", "family_config"]

_GPT2_TOKENS = dict(vocab_size=50257, bos_token_id=50256, eos_token_id=50256)
# Llama's tiny shape, which Qwen 2 and Mistral share: 2 layers, 4 heads over 2 key/value heads
_LLAMA_SHAPE = dict(
    num_hidden_layers=2,
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=176,
    max_position_embeddings=128,
    tie_word_embeddings=False,
)

# family -> (config class, model class, tiny config). GPT-2's tokenizer for all (its
# vocabulary fixes vocab_size and the bos/eos ids).
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(n_layer=2, n_embd=64, n_head=4, n_positions=128),
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",  # Pythia: partial rotary, parallel attention + MLP
        dict(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=128,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.25,
            },
        ),
    ),
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",  # RMSNorm, rotary, grouped-query attention, gated SiLU MLP
        dict(_LLAMA_SHAPE),
    ),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",  # 1+w norms, post-norms, soft-capping, alternating windows
        dict(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=128,
            max_position_embeddings=128,
            sliding_window=8,
            query_pre_attn_scalar=16,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
        ),
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",  # Llama's block with q/k/v biases
        dict(_LLAMA_SHAPE),
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",  # Llama's block with a sliding window on every layer
        dict(_LLAMA_SHAPE, sliding_window=8),
    ),
}


def family_config(family: str, **overrides: Any) -> Any:
    """The transformers config of a random ``family`` model: the tiny default with
    ``overrides`` (config keyword arguments) applied."""
    if family not in FAMILIES:
        raise ConfigError(
            f"unknown model family {family!r}; the families are {', '.join(FAMILIES)}."
        )
    import transformers

    config_cls, _, tiny = FAMILIES[family]
    return getattr(transformers, config_cls)(**{**_GPT2_TOKENS, **tiny, **overrides})


def build_random_model(
    family: str,
    folder: str | os.PathLike[str],
    seed: int = 0,
    save_dtype: str = "float32",
    **overrides: Any,
) -> Path:
    """Save a randomly initialised ``family`` model (:data:`FAMILIES`'s tiny config with
    ``overrides``, e.g. ``initializer_range=0.2`` for metrics that move) with the
    bundled GPT-2 tokenizer to ``folder``, loadable by TransformerBridge offline."""
    import torch
    import transformers

    from .resources import gpt2_tokenizer

    config = family_config(family, **overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, FAMILIES[family][1])(config).to(getattr(torch, save_dtype))
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    gpt2_tokenizer().save_pretrained(tmp)
    os.replace(tmp, folder)  # a half-built folder is never taken for a model
    return folder
