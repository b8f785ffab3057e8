"""Gemma 2: RMSNorms that multiply by 1 + weight, a norm after each attention and MLP
as well as before, soft-capped attention scores and logits, sliding-window attention on
alternate layers, GQA, embeddings scaled by sqrt(d_model)."""

from __future__ import annotations

from typing import Any

from .base import Adapter, register
from .hf import HFSite

__all__ = ["Gemma2"]

_L = "model.layers.{L}"


@register
class Gemma2(Adapter):
    name = "gemma2"
    architectures = ("Gemma2ForCausalLM",)
    final_norm = "rmsnorm"
    norm_weight_offset = 1.0
    sublayer_output_norms = True
    # the attention's and the MLP's outputs after their post-norms, as the bridge's hooks; the
    # embedding before Gemma's sqrt(d_model) scale (the scaled one is resid_pre 0)
    hf_sites = {
        "hook_embed": HFSite("model.embed_tokens"),
        "blocks.{L}.hook_resid_pre": HFSite(f"{_L}.input_layernorm", "input"),
        "blocks.{L}.hook_resid_mid": HFSite(f"{_L}.pre_feedforward_layernorm", "input"),
        "blocks.{L}.hook_resid_post": HFSite(_L),
        "blocks.{L}.hook_attn_out": HFSite(f"{_L}.post_attention_layernorm"),
        "blocks.{L}.hook_mlp_out": HFSite(f"{_L}.post_feedforward_layernorm"),
        "blocks.{L}.attn.hook_q": HFSite(f"{_L}.self_attn.q_proj", heads=True),
        "blocks.{L}.attn.hook_k": HFSite(f"{_L}.self_attn.k_proj", heads=True),
        "blocks.{L}.attn.hook_v": HFSite(f"{_L}.self_attn.v_proj", heads=True),
        "blocks.{L}.attn.hook_z": HFSite(f"{_L}.self_attn.o_proj", "input", heads=True),
        "blocks.{L}.mlp.hook_pre": HFSite(f"{_L}.mlp.act_fn", "input"),
        "blocks.{L}.mlp.hook_post": HFSite(f"{_L}.mlp.down_proj", "input"),
        "unembed.hook_out": HFSite("lm_head"),
    }

    @classmethod
    def final_softcap(cls, bridge: Any) -> float | None:
        cap = getattr(bridge.original_model.config, "final_logit_softcapping", None)
        return float(cap) if cap else None
