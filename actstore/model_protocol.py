"""The type of the model every engine takes: what actstore uses of a TransformerLens model
(a ``TransformerBridge``, or a ``HookedTransformer`` on TransformerLens 3). The engines ask
the model's family of its internals through its adapter (:func:`actstore.families.adapter_for`,
whose methods take this type too); everything else they use of the model itself is named here."""

from __future__ import annotations

from typing import Any, Protocol

import torch

__all__ = ["HookedModel"]


class HookedModel(Protocol):
    """A TransformerLens model: a forward over token ids, named hook points, and its config.

    Its modules (``blocks``, ``embed``, ``unembed``, ``ln_final``, ...) are reached as
    attributes, as on the model itself; which of them a family has, and what they compute,
    is the adapter's to say."""

    @property
    def cfg(self) -> Any: ...  # n_layers, n_heads, d_model, d_vocab, n_ctx, device, dtype, ...

    @property
    def hook_dict(self) -> dict[str, Any]: ...  # hook name -> hook point

    @property
    def tokenizer(self) -> Any: ...

    def __call__(self, tokens: torch.Tensor, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...

    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def hooks(self, *args: Any, **kwargs: Any) -> Any: ...

    def __getattr__(self, name: str) -> Any: ...
