"""Gemma 2: RMSNorms that multiply by 1 + weight, a norm after each attention and MLP
as well as before, soft-capped attention scores and logits, sliding-window attention on
alternate layers, GQA, embeddings scaled by sqrt(d_model)."""

from __future__ import annotations

from typing import Any

from .base import Adapter, register

__all__ = ["Gemma2"]


@register
class Gemma2(Adapter):
    name = "gemma2"
    architectures = ("Gemma2ForCausalLM",)
    final_norm = "rmsnorm"
    norm_weight_offset = 1.0
    sublayer_output_norms = True

    @classmethod
    def final_softcap(cls, bridge: Any) -> float | None:
        cap = getattr(bridge.original_model.config, "final_logit_softcapping", None)
        return float(cap) if cap else None
