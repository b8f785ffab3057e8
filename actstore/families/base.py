"""The adapter's base: what a family describes, and how a model finds its family.

A family's adapter is a subclass of :class:`Adapter` in its own module of this package,
registered with :func:`register`. Its class attributes describe the family; its methods
(added as the engines move onto the adapter) compute what the engines need from the
model's weights. The architecture is read from the Hugging Face model the bridge wraps
(``bridge.original_model``), e.g. ``GPT2LMHeadModel``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from ..errors import ConfigError

__all__ = ["Adapter", "ADAPTERS", "adapter_for", "architecture_of", "register"]


class Adapter:
    """A model family. Subclasses set the class attributes below."""

    name: ClassVar[str]  # e.g. "gpt2"
    architectures: ClassVar[tuple[str, ...]]  # Hugging Face model classes, e.g. ("GPT2LMHeadModel",)
    # `actstore cache --engine hf`: hook name template -> where the plain model computes it
    # (filled by the plain-transformers engine; see actstore/families/hf.py once it exists)
    hf_sites: ClassVar[Mapping[str, Any]] = {}


ADAPTERS: dict[str, type[Adapter]] = {}  # architecture -> adapter


def register(adapter: type[Adapter]) -> type[Adapter]:
    """Class decorator: serve ``adapter.architectures`` with ``adapter``."""
    for arch in adapter.architectures:
        if arch in ADAPTERS and ADAPTERS[arch] is not adapter:
            raise RuntimeError(f"architecture {arch} has two adapters: {ADAPTERS[arch].__name__}, {adapter.__name__}")
        ADAPTERS[arch] = adapter
    return adapter


def architecture_of(model: Any) -> str:
    """The Hugging Face class name of the model a TransformerBridge (or a LoadedModel,
    or a plain transformers model) wraps."""
    model = getattr(model, "bridge", model)
    return type(getattr(model, "original_model", model)).__name__


def adapter_for(model: Any, what: str = "this") -> type[Adapter]:
    """The adapter of ``model``'s family; a model of any other architecture is refused
    with a clear error naming the families served (``what`` names the engine asking)."""
    arch = architecture_of(model)
    if arch not in ADAPTERS:
        served = ", ".join(f"{a.name} ({', '.join(a.architectures)})" for a in dict.fromkeys(ADAPTERS.values()))
        raise ConfigError(f"{what} needs a model-family adapter, and actstore has none for {arch}; it serves "
                          f"{served}. Use TransformerLens directly for this model.")
    return ADAPTERS[arch]
