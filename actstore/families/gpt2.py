"""GPT-2 (gpt2 ... gpt2-xl, and models of its architecture such as actstore-demo):
learned absolute positions, LayerNorm, causal attention with one K/V per head, a GELU
MLP, the unembedding after ln_final."""

from __future__ import annotations

from .base import Adapter, register

__all__ = ["GPT2"]


@register
class GPT2(Adapter):
    name = "gpt2"
    hand_run_blocks = True
    architectures = ("GPT2LMHeadModel",)
