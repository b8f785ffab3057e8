"""Llama and the families built on its block: RMSNorm, rotary positions, grouped-query
attention, a gated SiLU MLP. Qwen 2 adds q/k/v biases; Mistral a sliding window."""

from __future__ import annotations

from .base import Adapter, register

__all__ = ["Llama", "Qwen2", "Mistral"]


@register
class Llama(Adapter):
    name = "llama"
    architectures = ("LlamaForCausalLM",)
    final_norm = "rmsnorm"


@register
class Qwen2(Llama):
    name = "qwen2"
    architectures = ("Qwen2ForCausalLM",)


@register
class Mistral(Llama):
    name = "mistral"
    architectures = ("MistralForCausalLM",)
