"""Gemma 2: RMSNorms that multiply by 1 + weight, a norm after each attention and MLP
as well as before, soft-capped attention scores and logits, sliding-window attention on
alternate layers, GQA, embeddings scaled by sqrt(d_model)."""

from __future__ import annotations

from ..model_protocol import HookedModel
from .base import Adapter, register
from .hf import HFSite
from .llama import Llama

__all__ = ["Gemma2"]

_L = "model.layers.{L}"


@register
class Gemma2(Adapter):
    name = "gemma2"
    architectures = ("Gemma2ForCausalLM",)
    final_norm = "rmsnorm"
    norm_weight_offset = 1.0
    sublayer_output_norms = True
    # Llama's module names, but the attention's and the MLP's outputs after their post-norms, as
    # the bridge's hooks (the embedding is before Gemma's sqrt(d_model) scale; resid_pre 0 after)
    hf_sites = {
        **Llama.hf_sites,
        "blocks.{L}.hook_resid_mid": HFSite(f"{_L}.pre_feedforward_layernorm", "input"),
        "blocks.{L}.hook_attn_out": HFSite(f"{_L}.post_attention_layernorm"),
        "blocks.{L}.hook_mlp_out": HFSite(f"{_L}.post_feedforward_layernorm"),
    }

    @classmethod
    def final_softcap(cls, bridge: HookedModel) -> float | None:
        cap = getattr(bridge.original_model.config, "final_logit_softcapping", None)
        return float(cap) if cap else None
