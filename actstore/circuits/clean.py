"""The clean run's output of every upstream node of a circuit graph, (upstream, batch,
pos, d_model), in the graph's node order (see graph.py):

- ``input``: ``hook_embed + hook_pos_embed`` (or ``blocks.0.hook_resid_pre``, the same sum);
- ``a{L}.h{H}``: head H's ``blocks.L.attn.hook_z`` times its ``W_O`` (no ``b_O``, which no
  node owns);
- ``m{L}``: ``blocks.L.hook_mlp_out``.

They come from a run of the clean tokens, from an ActivationCache (or any mapping of
hook name -> tensor), or from an actstore store and the rows holding the clean prompts
(read with :class:`actstore.patching.clean.CleanSource`, which checks the store's model).
A store must hold ``z`` and ``mlp_out`` of every layer and ``embed`` + ``pos_embed`` or
``resid_pre`` of layer 0: ``actstore cache ... --sites z:all,mlp_out:all,resid_pre:0``.
Outputs are made a slice of pairs at a time, so memory stays bounded for big models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float

from ..errors import ConfigError, StoreMismatchError
from ..model_protocol import HookedModel
from ..models import bridge_dtype
from ..patching.clean import CleanSource
from .graph import Graph

__all__ = [
    "CleanNodes",
    "node_hooks",
    "node_outputs",
    "run_node_outputs",
    "store_hooks",
    "STORE_SITES",
]

#: the --sites of a store that edge scores can read (resid_pre 0 = embed + pos_embed, the input node)
STORE_SITES = "z:all,mlp_out:all,resid_pre:0"
_EMBED = ("hook_embed", "hook_pos_embed")
_RESID0 = "blocks.0.hook_resid_pre"


def node_hooks(n_layers: int, embed: Sequence[str] = _EMBED) -> list[str]:
    """The hooks node outputs are read from: ``embed`` (the two embeddings, or resid_pre 0),
    then each layer's z and mlp_out."""
    return [
        *embed,
        *(
            h
            for L in range(n_layers)
            for h in (f"blocks.{L}.attn.hook_z", f"blocks.{L}.hook_mlp_out")
        ),
    ]


def store_hooks(n_layers: int) -> list[str]:
    """The hooks a store cached with :data:`STORE_SITES` holds (resid_pre 0 as the input node)."""
    return node_hooks(n_layers, (_RESID0,))


def node_outputs(
    model: HookedModel, acts: Mapping[str, torch.Tensor]
) -> Float[torch.Tensor, "upstream batch pos d_model"]:
    """Every upstream node's output from one run's activations (``acts`` holds
    :func:`node_hooks`' hooks, with either embedding form), in graph order."""
    first = (
        acts[_RESID0]
        if _RESID0 in acts and not all(h in acts for h in _EMBED)
        else acts["hook_embed"] + acts["hook_pos_embed"]
    )
    outs = [first[None]]
    for layer in range(int(model.cfg.n_layers)):
        z = acts[f"blocks.{layer}.attn.hook_z"]  # (batch, pos, head, d_head)
        w_o = model.blocks[layer].attn.W_O.to(z.dtype)  # (head, d_head, d_model)
        outs += [torch.einsum("bphd,hdm->hbpm", z, w_o), acts[f"blocks.{layer}.hook_mlp_out"][None]]
    return torch.cat(outs)


def run_node_outputs(
    model: HookedModel, tokens: torch.Tensor, embed: torch.Tensor | None = None
) -> Float[torch.Tensor, "upstream batch pos d_model"]:
    """Every upstream node's output in the model's own forward on ``tokens`` (no gradient);
    ``embed`` (batch, pos, d_model) replaces the input node's output (the residual entering
    block 0), as EAP-IG over inputs interpolates it."""
    hooks = store_hooks(int(model.cfg.n_layers))
    acts: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Any:
        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            if name == _RESID0 and embed is not None:
                act = embed.to(act.dtype).clone()
            acts[name] = act.detach()  # by our name: a bridge's hook.name may be an alias's
            return act

        return fn

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(h, keep(h)) for h in hooks])
        return node_outputs(model, acts)


class CleanNodes:
    """The clean node outputs of a batch of pairs, made ``[start, stop)`` pairs at a time.

    Args:
        model: the TransformerBridge (or HookedTransformer) being scored.
        clean: clean token ids (batch, pos), an ActivationCache / mapping of hook -> tensor
            (batch first), or an ActivationStore (with ``clean_rows``).
        graph: the graph whose upstream nodes are made (its shape is checked against the model).
        n_pos, batch: the corrupted prompts' length and number.
        clean_rows: the store row of each clean prompt (stores only; default rows 0..batch-1).
    """

    def __init__(
        self,
        model: HookedModel,
        clean: Any,
        graph: Graph,
        n_pos: int,
        batch: int,
        clean_rows: Sequence[int] | None = None,
    ):
        from ..store import ActivationStore

        self.model, self.n_pos, self.batch = model, n_pos, batch
        n_layers = int(model.cfg.n_layers)
        if (graph.n_layers, graph.n_heads) != (n_layers, int(model.cfg.n_heads)):
            raise ConfigError(
                f"the graph has {graph.n_layers} layers x {graph.n_heads} heads but the model "
                f"{n_layers} x {model.cfg.n_heads}; pass Graph.from_model(model)."
            )
        self.tokens: torch.Tensor | None = None
        self.source: Any = None
        if isinstance(clean, torch.Tensor) and not clean.is_floating_point():
            if clean_rows is not None:
                raise ConfigError(
                    "clean_rows applies only when the clean activations are an ActivationStore; "
                    "drop clean_rows, or pass the store as clean_cache."
                )
            if tuple(clean.shape) != (batch, n_pos):
                raise ConfigError(
                    f"clean tokens have shape {tuple(clean.shape)} but the corrupted ones "
                    f"({batch}, {n_pos}); each pair's prompts need the same number of tokens."
                )
            self.tokens = clean
            self.embed: Sequence[str] = (_RESID0,)
        elif isinstance(clean, ActivationStore):
            have = set(clean.sites)
            self.embed = _EMBED if all(h in have for h in _EMBED) else (_RESID0,)
            missing = [h for h in node_hooks(n_layers, self.embed) if h not in have]
            if missing:
                raise StoreMismatchError(
                    f"Store '{clean.path}' lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}, which "
                    f"edge scores read (every layer's z and mlp_out, and the embeddings or resid_pre of layer 0). "
                    f"Cache the clean prompts with `actstore cache ... --sites {STORE_SITES}`, or pass clean tokens "
                    "or an ActivationCache."
                )
            # checks the model and rows before any work
            full = CleanSource(clean, model, n_pos, batch, clean_rows)
            self.source = (clean, full.rows)
        elif hasattr(clean, "keys") and hasattr(clean, "__getitem__"):
            if clean_rows is not None:
                raise ConfigError(
                    "clean_rows applies only when the clean activations are an ActivationStore; "
                    "drop clean_rows, or pass the store."
                )
            have = set(clean.keys())
            self.embed = _EMBED if all(h in have for h in _EMBED) else (_RESID0,)
            missing = [h for h in node_hooks(n_layers, self.embed) if h not in have]
            if missing:
                raise ConfigError(
                    f"the clean cache lacks {', '.join(missing[:4])}; run_with_cache the clean "
                    "prompts with every layer's z and mlp_out and hook_embed/hook_pos_embed (or "
                    "blocks.0.hook_resid_pre), or pass the clean tokens."
                )
            self.source = CleanSource(clean, model, n_pos, batch)
        else:
            raise ConfigError(
                f"clean must be token ids (batch, pos), an ActivationCache or mapping, or an "
                f"ActivationStore; got {type(clean).__name__}."
            )

    def __call__(self, start: int, stop: int) -> Float[torch.Tensor, "upstream batch pos d_model"]:
        """Clean node outputs of pairs ``start`` to ``stop - 1``."""
        if self.tokens is not None:
            return run_node_outputs(self.model, self.tokens[start:stop])
        hooks = node_hooks(int(self.model.cfg.n_layers), self.embed)
        if isinstance(self.source, CleanSource):
            acts = {h: self.source[h][start:stop] for h in hooks}
        else:
            store, rows = self.source
            src = CleanSource(store, self.model, self.n_pos, stop - start, rows[start:stop])
            acts = {h: src[h] for h in hooks}
        dtype, device = bridge_dtype(self.model), torch.device(self.model.cfg.device)
        with torch.no_grad():
            return node_outputs(
                self.model, {h: a.to(device=device, dtype=dtype) for h, a in acts.items()}
            )
