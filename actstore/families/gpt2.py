"""GPT-2 (gpt2 ... gpt2-xl, and models of its architecture such as actstore-demo):
learned absolute positions, LayerNorm, causal attention with one K/V per head, a GELU
MLP, the unembedding after ln_final."""

from __future__ import annotations

from .base import Adapter, register
from .hf import HFSite

__all__ = ["GPT2"]

_H = "transformer.h.{L}"


@register
class GPT2(Adapter):
    name = "gpt2"
    hand_run_blocks = True
    architectures = ("GPT2LMHeadModel",)
    hf_sites = {
        "hook_embed": HFSite("transformer.wte"),
        "blocks.{L}.hook_resid_pre": HFSite(f"{_H}.ln_1", "input"),
        "blocks.{L}.hook_resid_mid": HFSite(f"{_H}.ln_2", "input"),
        "blocks.{L}.hook_resid_post": HFSite(_H),
        "blocks.{L}.hook_attn_out": HFSite(f"{_H}.attn"),
        "blocks.{L}.hook_mlp_out": HFSite(f"{_H}.mlp"),
        "blocks.{L}.attn.hook_q": HFSite(f"{_H}.attn.c_attn", part=0, heads=True),
        "blocks.{L}.attn.hook_k": HFSite(f"{_H}.attn.c_attn", part=1, heads=True),
        "blocks.{L}.attn.hook_v": HFSite(f"{_H}.attn.c_attn", part=2, heads=True),
        "blocks.{L}.attn.hook_z": HFSite(f"{_H}.attn.c_proj", "input", heads=True),
        "blocks.{L}.mlp.hook_pre": HFSite(f"{_H}.mlp.act", "input"),
        "blocks.{L}.mlp.hook_post": HFSite(f"{_H}.mlp.act"),
        "unembed.hook_out": HFSite("lm_head"),
    }
