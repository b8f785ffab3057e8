"""Direct paths through the model's own per-head q/k/v input fork.

For the families whose blocks :mod:`actstore.patching.engine` does not run by hand
(rotary positions, grouped-query attention, ...), direct path patching
(:func:`actstore.patching.path.direct_path_sweep`) runs as the reference does: the
model's ``use_split_qkv_input`` switched on, and each edge source head -> later head
patched as the source's write ``z @ W_O`` added to that head's own
``blocks.L.attn.hook_{q,k,v}_input``. The edges run as one engine sweep of that hook,
whole plain forwards, many edges at a time. What the edge does not define on a family
(a normalised attention output, a key/value head shared by several query heads) is
refused up front.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import ConfigError
from ..model_protocol import HookedModel
from .engine import Sweep, run_sweep
from .metrics import Metrics

__all__ = ["forked_edge_sweep", "split_qkv_input", "check_forked_direct_path"]


def forked_edge_sweep(
    model: HookedModel,
    corrupted_tokens: torch.Tensor,
    deltas: torch.Tensor,
    indices: list[list[int]],
    component: str,
    metrics: Metrics,
    memory_budget: int | None,
    progress: bool,
) -> torch.Tensor:
    """Every edge's metric values, (index, metric): index = (layer, source, head), the
    source's write (``deltas``: (source, batch, pos, d_model)) added to that head's own
    ``component`` input, one engine sweep of whole plain forwards."""
    with split_qkv_input(model):
        sweep = Sweep(
            indices=indices,
            act_name=lambda layer: f"blocks.{layer}.attn.hook_{component}_input",
            patch_setter=_add_write,
        )
        out, _ = run_sweep(
            model,
            corrupted_tokens,
            _Writes(deltas),
            metrics,
            sweep,
            memory_budget,
            progress,
        )
    return out


class _Writes:
    """The sources' residual writes (source, batch, pos, d_model) under every hook name."""

    def __init__(self, deltas: torch.Tensor):
        self.deltas = deltas

    def __getitem__(self, hook: str) -> torch.Tensor:
        return self.deltas


def _add_write(act: torch.Tensor, index: Sequence[int], deltas: torch.Tensor) -> torch.Tensor:
    """index = (layer, source, head): the source's write added to that head's input
    only (a new tensor, as the reference's hook)."""
    _, src, head = index
    out = act.clone()
    out[:, :, head] += deltas[src].to(act.dtype)
    return out


@contextmanager
def split_qkv_input(model: HookedModel) -> Iterator[None]:
    """The model's per-head q/k/v input hooks switched on (and its own settings back on exit)."""
    split = bool(getattr(model.cfg, "use_split_qkv_input", False))
    attn_in = bool(getattr(model.cfg, "use_attn_in", False))
    try:
        if attn_in:
            model.set_use_attn_in(False)  # (the two forks exclude each other)
        model.set_use_split_qkv_input(True)
        yield
    finally:
        model.set_use_split_qkv_input(split)
        if attn_in:
            model.set_use_attn_in(True)


def check_forked_direct_path(model: HookedModel, adapter: Any, component: str) -> None:
    """Refuse what the edge does not define on this family, up front."""
    if not hasattr(model, "set_use_split_qkv_input"):
        raise ConfigError(
            f"direct path patching on a {adapter.name} model patches each head's own q/k/v input, "
            "which this model cannot hook (no set_use_split_qkv_input); load it with TransformerBridge."
        )
    if adapter.sublayer_output_norms:
        raise ConfigError(
            f"direct path patching adds a source head's write z @ W_O to a later head's input, and a "
            f"{adapter.name} model normalises each attention output before it joins the residual, so "
            "a head's write is not z @ W_O; actstore refuses rather than approximate (as "
            "transformer_lens.patching does)."
        )
    n_kv = getattr(model.cfg, "n_key_value_heads", None)
    if component != "q" and n_kv not in (None, int(model.cfg.n_heads)):
        raise ConfigError(
            f"direct path patching into component={component!r}: this {adapter.name} model shares each "
            f"key/value head among {int(model.cfg.n_heads) // int(n_kv)} query heads (n_key_value_heads="
            f"{n_kv}, n_heads={model.cfg.n_heads}), so one head's own {component} input is not defined. "
            "component='q' works."
        )
