"""The adapter's base: what a family describes, and how a model finds its family.

A family's adapter is a subclass of :class:`Adapter` in its own module of this package,
registered with :func:`register`. Its class attributes describe the family; its methods
(added as the engines move onto the adapter) compute what the engines need from the
model's weights. The architecture is read from the Hugging Face model the bridge wraps
(``bridge.original_model``), e.g. ``GPT2LMHeadModel``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..errors import ConfigError
from ..model_protocol import HookedModel

if TYPE_CHECKING:
    import torch

__all__ = ["Adapter", "ADAPTERS", "adapter_for", "architecture_of", "register"]


class Adapter:
    """A model family. Subclasses set the class attributes below."""

    name: ClassVar[str]  # e.g. "gpt2"
    # Hugging Face model classes, e.g. ("GPT2LMHeadModel",)
    architectures: ClassVar[tuple[str, ...]]
    # `actstore cache --engine hf`: hook name ({L}: the layer) -> where the plain model
    # computes it (a families.hf.HFSite); a family without the map cannot use that engine
    hf_sites: ClassVar[Mapping[str, Any]] = {}
    # the final norm: LayerNorm (centre, scale, weight, bias) or RMSNorm (scale, weight)
    final_norm: ClassVar[Literal["layernorm", "rmsnorm"]] = "layernorm"
    # Gemma's RMSNorm multiplies by 1 + weight: what is added to the stored weight
    norm_weight_offset: ClassVar[float] = 0.0
    # each attention and MLP output normalised before it joins the residual (Gemma 2's
    # post-norms): a head's output then reaches the logits through a norm of the sum
    sublayer_output_norms: ClassVar[bool] = False
    # actstore's own block runner (patching, path patching, circuits) computes this
    # family exactly (absolute positions, one K/V per head)
    hand_run_blocks: ClassVar[bool] = False
    # short site -> why this family's models have no such hook
    absent_sites: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def final_softcap(cls, bridge: HookedModel) -> float | None:
        """The cap c of the logits' soft-capping (c * tanh(logits / c)), or None."""
        return None

    @classmethod
    def logits(cls, bridge: HookedModel, resid: torch.Tensor) -> torch.Tensor:
        """The logits the model computes from a final residual ``resid`` (..., d_model):
        the final norm, the unembedding and the family's soft-capping, in the model's
        own modules and order of operations (so the final layer's equal the forward's)."""
        out = bridge.unembed(bridge.ln_final(resid))
        cap = cls.final_softcap(bridge)
        if cap:
            out = (out / cap).tanh() * cap  # as transformers' Gemma2ForCausalLM
        return out

    @classmethod
    def logit_columns(
        cls, bridge: HookedModel, resid: torch.Tensor, token_ids: Sequence[int]
    ) -> torch.Tensor:
        """:meth:`logits` for the vocabulary columns ``token_ids`` only (..., len(token_ids)):
        only those rows of the unembedding are multiplied."""
        import torch
        import torch.nn.functional as F

        h = bridge.ln_final(resid)
        lin = getattr(bridge.unembed, "original_component", None)
        if isinstance(lin, torch.nn.Linear):
            idx = torch.tensor(list(token_ids), device=h.device)
            bias = lin.bias.index_select(0, idx) if lin.bias is not None else None
            out = F.linear(h, lin.weight.index_select(0, idx), bias)
        else:
            out = bridge.unembed(h)[..., list(token_ids)]
        cap = cls.final_softcap(bridge)
        if cap:
            out = (out / cap).tanh() * cap
        return out

    @classmethod
    def final_norm_weight(cls, bridge: HookedModel) -> torch.Tensor:
        """The final norm's effective per-dimension weight."""
        return bridge.ln_final.w.detach() + cls.norm_weight_offset

    @classmethod
    def check_hooks(cls, model: HookedModel, hooks: Sequence[str], what: str) -> None:
        """Refuse ``what``, which reads ``hooks``, unless the model has every one of them
        (naming why the family has none where its adapter says)."""
        have = getattr(model, "hook_dict", None)
        if have is None:
            return
        missing = [h for h in hooks if h not in have]
        if missing:
            from ..sites import Site

            why = (
                cls.absent_sites.get(Site.from_hook(missing[0]).kind)
                or "TransformerLens defines no such hook for it"
            )
            raise ConfigError(
                f"{what} reads {missing[0]}, and this {cls.name} model has no such hook: {why}."
            )

    @classmethod
    def parallel_blocks(cls, bridge: HookedModel) -> bool:
        """Whether the model's blocks run attention and the MLP side by side from the block's
        input (so an MLP reads no head of its own layer)."""
        return False

    @classmethod
    def edge_graph_problem(cls, bridge: HookedModel) -> str | None:
        """Why the circuit graph (actstore.circuits.graph: the residual stream as the sum of
        the nodes' outputs, read by one q, k and v input per head) does not describe this
        model exactly; None where it does."""
        if cls.sublayer_output_norms:
            return (
                "each attention and MLP output is normalised before it joins the residual, so a head's write is "
                "not z @ W_O"
            )
        cfg = getattr(bridge, "cfg", None)
        n_kv, n_heads = getattr(cfg, "n_key_value_heads", None), getattr(cfg, "n_heads", None)
        if n_kv is not None and n_heads is not None and int(n_kv) != int(n_heads):
            return (
                f"each key/value head is shared by {int(n_heads) // int(n_kv)} query heads (n_key_value_heads="
                f"{n_kv}, n_heads={n_heads}), a graph actstore does not have yet"
            )
        return None

    @classmethod
    def check_edge_graph(cls, bridge: HookedModel) -> None:
        """Refuse a model :meth:`edge_graph_problem` names a problem with."""
        why = cls.edge_graph_problem(bridge)
        if why:
            raise ConfigError(
                f"Circuit discovery scores the edges of a graph whose residual stream is the sum of its "
                f"nodes' outputs, each head with its own query, key and value input; in this {cls.name} "
                f"model {why}. actstore refuses rather than approximate: use activation patching "
                "(actstore patch, every sweep) for this model."
            )

    @classmethod
    def check_direct_paths(cls, what: str) -> None:
        """Refuse ``what`` (a linear attribution of the logits to each head's and MLP's
        output) for a family whose logits are not such a sum."""
        if cls.sublayer_output_norms:
            raise ConfigError(
                f"{what} attributes a logit to each head and MLP as a sum of parts, and {cls.name} models are not "
                "such a sum: they normalise each attention and MLP output before it joins the residual (and soft-cap "
                "the logits), so a per-head share is not defined exactly. actstore refuses rather than approximate; "
                "use the logit lens, or patch the model with TransformerLens."
            )


ADAPTERS: dict[str, type[Adapter]] = {}  # architecture -> adapter


def register(adapter: type[Adapter]) -> type[Adapter]:
    """Class decorator: serve ``adapter.architectures`` with ``adapter``."""
    for arch in adapter.architectures:
        if arch in ADAPTERS and ADAPTERS[arch] is not adapter:
            raise RuntimeError(
                f"architecture {arch} has two adapters: {ADAPTERS[arch].__name__}, {adapter.__name__}"
            )
        ADAPTERS[arch] = adapter
    return adapter


def architecture_of(model: Any) -> str:
    """The Hugging Face class name of the model a TransformerBridge (or a LoadedModel,
    or a plain transformers model) wraps. A TransformerLens 3.x HookedTransformer has no
    Hugging Face model under it: its config's ``original_architecture`` names it, and one
    built from a bare config is GPT-2's when its config says GPT-2's block (learned
    absolute positions, LayerNorm, one key/value per head, attention and MLP in turn)."""
    model = getattr(model, "bridge", model)
    original = getattr(model, "original_model", None)
    if original is not None:
        return type(original).__name__
    cfg = getattr(model, "cfg", None)
    arch = getattr(cfg, "original_architecture", None)
    if isinstance(arch, str) and arch:
        return arch
    if cfg is not None and hasattr(model, "blocks") and _gpt2_block(cfg):
        return "GPT2LMHeadModel"
    return type(model).__name__


def _gpt2_block(cfg: Any) -> bool:
    return (
        getattr(cfg, "positional_embedding_type", None) == "standard"
        and getattr(cfg, "normalization_type", None) in ("LN", "LNPre")
        and getattr(cfg, "n_key_value_heads", None) in (None, getattr(cfg, "n_heads", None))
        and not getattr(cfg, "parallel_attn_mlp", False)
        and not getattr(cfg, "gated_mlp", False)
    )


def adapter_for(model: Any, what: str = "this") -> type[Adapter]:
    """The adapter of ``model``'s family; a model of any other architecture is refused
    with a clear error naming the families served (``what`` names the engine asking)."""
    arch = architecture_of(model)
    if arch not in ADAPTERS:
        served = ", ".join(
            f"{a.name} ({', '.join(a.architectures)})"
            for a in sorted(set(ADAPTERS.values()), key=lambda a: a.name)
        )
        raise ConfigError(
            f"{what} needs a model-family adapter, and actstore has none for {arch}; it serves "
            f"{served}. Use TransformerLens directly for this model."
        )
    return ADAPTERS[arch]
