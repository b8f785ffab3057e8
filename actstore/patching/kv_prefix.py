"""Earlier positions' keys and values handed to the attentions of a windowed run.

The patching engine runs patched variants over positions ``[start, end)`` only; each
attention must then attend to the corrupted run's keys and values of ``[0, start)`` as
well. TransformerLens's attention bridges take such a prefix as a Hugging Face cache
object: ``cache.update(k, v, layer_idx)`` returns the keys and values to attend to.

How that object reaches the attention is an internal of two libraries that has changed
under us: transformers 5.24 renamed the block's ``past_key_values`` argument to
``cache`` and passes ``cache=`` to its attention, while TransformerLens 4.3's bridge
reads only ``past_key_values`` (or ``layer_past``); a prefix passed to the block was
then silently dropped. So the prefix is not passed through the block at all: a
forward pre-hook on each attention module puts it into the attention's own keyword
arguments, under every name a bridge has read it by. Whether it was used is checked
(:attr:`PrefixKV.calls`), and every sweep compares one variant against a plain
``run_with_hooks`` (:mod:`actstore.patching.self_check`), so a future change fails loudly.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..model_protocol import HookedModel

__all__ = ["PrefixKV", "attention_prefix"]

# the keyword names under which an attention bridge has looked for its KV cache
_CACHE_KWARGS = ("past_key_values", "cache", "layer_past")


class PrefixKV:
    """Stands in for a Hugging Face cache: each attention's ``update(k, v, layer)``
    gets the corrupted run's keys/values of positions ``[0, start)`` (and, for a layer
    in ``extra``, given ones after them) in front of its own, for every variant row.
    Nothing is stored between calls; ``calls`` counts the layers served."""

    def __init__(
        self,
        keys: Mapping[int, torch.Tensor],
        values: Mapping[int, torch.Tensor],
        start: int,
        n_var: int,
    ):
        self.keys, self.values, self.start, self.n_var = keys, values, start, n_var
        self.extra: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.calls: list[int] = []

    def update(
        self, k: torch.Tensor, v: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(int(layer_idx))
        # (row, head, start, d_head)
        pk = self.keys[layer_idx][:, :, : self.start].repeat(self.n_var, 1, 1, 1)
        pv = self.values[layer_idx][:, :, : self.start].repeat(self.n_var, 1, 1, 1)
        ek, ev = self.extra.get(layer_idx, (k[:, :, :0], v[:, :, :0]))
        return torch.cat([pk, ek, k], dim=2), torch.cat([pv, ev, v], dim=2)

    # the read-only part of the Cache interface an attention may query
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.start + (self.extra[layer_idx][0].shape[2] if layer_idx in self.extra else 0)


@contextmanager
def attention_prefix(
    model: HookedModel, layers: Sequence[int], prefix: PrefixKV | None
) -> Iterator[None]:
    """Within the block, hand ``prefix`` to the attention of each of ``layers`` as its
    KV cache; a no-op when ``prefix`` is None. On exit, raise if an attention that ran
    did not use it (the keys and values of the earlier positions would be missing)."""
    if prefix is None:
        yield
        return

    ran: list[int] = []

    def give(layer: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            ran.append(layer)
            for name in _CACHE_KWARGS:
                if name == _CACHE_KWARGS[0] or name in kwargs:
                    kwargs[name] = prefix
            return args, kwargs

        return hook

    handles = [
        model.blocks[layer].attn.register_forward_pre_hook(give(layer), with_kwargs=True)
        for layer in layers
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    unused = sorted(set(ran) - set(prefix.calls))
    if unused:
        from .self_check import engine_error

        raise engine_error(
            f"found that the attention of layers {unused} ignored the earlier positions' keys and "
            "values handed to it",
            kv_prefix=True,
        )
