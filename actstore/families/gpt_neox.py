"""GPT-NeoX (Pythia): rotary positions on part of each head, LayerNorm, attention and
MLP in parallel from the same residual, an untied unembedding."""

from __future__ import annotations

from ..model_protocol import HookedModel
from .base import Adapter, register
from .hf import HFSite

__all__ = ["GPTNeoX"]

_L = "gpt_neox.layers.{L}"


@register
class GPTNeoX(Adapter):
    name = "gpt_neox"
    architectures = ("GPTNeoXForCausalLM",)
    absent_sites = {
        "resid_mid": "its blocks run attention and the MLP in parallel, both from the block's input, so "
        "no residual lies between them; patch resid_pre, attn_out or mlp_out instead"
    }

    # no q, k, v: the fused query_key_value interleaves them head by head (refused, naming the bridge);
    # no resid_mid: attention and MLP both read the block's input
    @classmethod
    def parallel_blocks(cls, bridge: HookedModel) -> bool:
        config = getattr(getattr(bridge, "original_model", None), "config", None)
        if config is None:  # a HookedTransformer: its own config says
            return bool(getattr(bridge.cfg, "parallel_attn_mlp", True))
        return bool(getattr(config, "use_parallel_residual", True))

    hf_sites = {
        "hook_embed": HFSite("gpt_neox.embed_in"),
        "blocks.{L}.hook_resid_pre": HFSite(f"{_L}.input_layernorm", "input"),
        "blocks.{L}.hook_resid_post": HFSite(_L),
        "blocks.{L}.hook_attn_out": HFSite(f"{_L}.attention"),
        "blocks.{L}.hook_mlp_out": HFSite(f"{_L}.mlp"),
        "blocks.{L}.attn.hook_z": HFSite(f"{_L}.attention.dense", "input", heads=True),
        "blocks.{L}.mlp.hook_pre": HFSite(f"{_L}.mlp.act", "input"),
        "blocks.{L}.mlp.hook_post": HFSite(f"{_L}.mlp.act"),
        "unembed.hook_out": HFSite("lm_head"),
    }
