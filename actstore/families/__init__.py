"""One adapter per model family: everything the engines ask of a model's internals
(:mod:`actstore.families.base`), described once per family. An engine asks
:func:`adapter_for` for the model's adapter and never names a family; a model of an
architecture with no adapter is refused, naming the families served.

Adding a family is one adapter file here, registered in :data:`ADAPTERS`, plus its
fidelity cases in tests/families/ (docs/layout.md).
"""

from .base import ADAPTERS, Adapter, adapter_for, architecture_of, register

__all__ = ["Adapter", "ADAPTERS", "adapter_for", "architecture_of", "register"]

from . import gemma2, gpt2, gpt_neox, llama  # noqa: E402,F401  (each registers itself)
