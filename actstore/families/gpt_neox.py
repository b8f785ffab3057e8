"""GPT-NeoX (Pythia): rotary positions on part of each head, LayerNorm, attention and
MLP in parallel from the same residual, an untied unembedding."""

from __future__ import annotations

from .base import Adapter, register

__all__ = ["GPTNeoX"]


@register
class GPTNeoX(Adapter):
    name = "gpt_neox"
    architectures = ("GPTNeoXForCausalLM",)
