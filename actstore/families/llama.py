"""Llama and the families built on its block: RMSNorm, rotary positions, grouped-query
attention, a gated SiLU MLP. Qwen 2 adds q/k/v biases; Mistral a sliding window."""

from __future__ import annotations

from .base import Adapter, register
from .hf import HFSite

__all__ = ["Llama", "Qwen2", "Mistral"]

_L = "model.layers.{L}"


@register
class Llama(Adapter):
    name = "llama"
    architectures = ("LlamaForCausalLM",)
    final_norm = "rmsnorm"
    hf_sites = {
        "hook_embed": HFSite("model.embed_tokens"),
        "blocks.{L}.hook_resid_pre": HFSite(f"{_L}.input_layernorm", "input"),
        "blocks.{L}.hook_resid_mid": HFSite(f"{_L}.post_attention_layernorm", "input"),
        "blocks.{L}.hook_resid_post": HFSite(_L),
        "blocks.{L}.hook_attn_out": HFSite(f"{_L}.self_attn"),
        "blocks.{L}.hook_mlp_out": HFSite(f"{_L}.mlp"),
        # q and k before the rotary embedding, as the bridge's hooks; k and v: the key/value heads
        "blocks.{L}.attn.hook_q": HFSite(f"{_L}.self_attn.q_proj", heads=True),
        "blocks.{L}.attn.hook_k": HFSite(f"{_L}.self_attn.k_proj", heads=True),
        "blocks.{L}.attn.hook_v": HFSite(f"{_L}.self_attn.v_proj", heads=True),
        "blocks.{L}.attn.hook_z": HFSite(f"{_L}.self_attn.o_proj", "input", heads=True),
        "blocks.{L}.mlp.hook_pre": HFSite(f"{_L}.mlp.act_fn", "input"),  # the gate's pre-activation
        "blocks.{L}.mlp.hook_post": HFSite(f"{_L}.mlp.down_proj", "input"),  # act(gate) * up
        "unembed.hook_out": HFSite("lm_head"),
    }


@register
class Qwen2(Llama):
    name = "qwen2"
    architectures = ("Qwen2ForCausalLM",)


@register
class Mistral(Llama):
    name = "mistral"
    architectures = ("MistralForCausalLM",)
