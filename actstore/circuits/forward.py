"""A forward in which every downstream input of the edge graph is computed from its own
edges: the one mechanism behind edge attribution (its gradient in the mask),
faithfulness (masks of circuits) and path patching (masks plus replaced senders). Written
out here for GPT-2; the other families get the same from the model's own forward and
hooks (:mod:`actstore.circuits.forward_hooked`, which ``GraphForward(model)`` returns there).

``run(tokens, mask, patch)`` computes, for each variant v, a forward on ``tokens`` in
which every downstream input d of :class:`~actstore.circuits.graph.Graph` reads

    sum over edges e = (u -> d) of  mask[v, e] * live_u + (1 - mask[v, e]) * patch[u]

plus the attention output biases b_O of the layers before it (for an MLP, of its own
layer too; no node owns them, so no mask touches them). ``live_u`` is node u's output
in this same forward. With ``mask`` all ones this is the model's own forward; with all
zeros and ``patch = node_outputs(other)``, the other input's.

The per-input sums are what the model computes as one residual stream; here each head's
query, key and value input and each MLP's input is its own tensor, so an edge can be
cut without touching the others. The block's parts run from the model's own modules
(``ln1``, ``ln2``, ``mlp``, ``ln_final``) and weights (``W_Q`` ... ``b_O``, ``W_U``,
``b_U``, ``W_E``, ``W_pos``); only the attention arithmetic (causal softmax of
q.k / sqrt(d_head)) is written here. The first run on a model is checked against the
model's own logits (:data:`actstore.patching.self_check.ENABLED`): a TransformerLens
release that computes a block another way fails loudly instead of scoring silently
wrong edges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..model_protocol import HookedModel
from ..patching import self_check
from ..patching.engine import check_hand_run, check_model
from ..sites import hook_name
from .clean import run_node_outputs
from .edge_sum import edge_sum
from .graph import Graph

__all__ = ["GraphForward", "check_logits", "token_ids"]


class GraphForward:
    """The masked edge forward of one model (see the module's docstring). On a family whose
    blocks actstore does not compute by hand (its adapter's ``hand_run_blocks``),
    ``GraphForward(model)`` is a :class:`~actstore.circuits.forward_hooked.HookedGraphForward`:
    the same run, made of the model's own forward and hooks."""

    hand_run: ClassVar[bool] = True  # computes the blocks itself (the adapter's hand_run_blocks)

    def __new__(cls, model: HookedModel, graph: Graph | None = None) -> GraphForward:
        if cls is GraphForward and not check_model(model, "Circuit discovery").hand_run_blocks:
            # the subclass for the other families (actstore.circuits imports its module)
            other = [sub for sub in GraphForward.__subclasses__() if not sub.hand_run]
            if not other:
                raise RuntimeError(
                    "actstore.circuits.forward_hooked is not imported; import actstore.circuits."
                )
            return super().__new__(other[0])
        return super().__new__(cls)

    def __init__(self, model: HookedModel, graph: Graph | None = None):
        self._check_family(model)
        self.model = model
        self.graph = Graph.for_model(model, graph)
        cfg = model.cfg
        g = self.graph
        self.d_model, self.d_head, self.n_heads = (
            int(cfg.d_model),
            int(cfg.d_head),
            int(cfg.n_heads),
        )
        self.device = torch.device(cfg.device)
        self.dtype = model.W_E.dtype  # the weights' (a bridge or a HookedTransformer)
        self._node = {u.name: i for i, u in enumerate(g.upstream)}
        # per downstream input: its edges (a contiguous range) and their source nodes
        starts = torch.searchsorted(torch.as_tensor(g.dst), torch.arange(len(g.downstream) + 1))
        self._range = [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
        self._checked = False

    def _check_family(self, model: HookedModel) -> None:
        check_hand_run(model, "Circuit discovery")

    # --- sizes --------------------------------------------------------------------------

    def row_bytes(self, n_pos: int, grad: bool = False) -> int:
        """Bytes one (variant x pair) row of :meth:`run` needs, roughly: every node's output
        less its patch value (kept whole), one layer's per-head inputs and their layer norm,
        and with ``grad`` what autograd keeps of every layer (the per-head inputs, normed and
        summed, the heads' outputs, the MLP's hidden layer, the attention pattern)."""
        n_up, d, h = len(self.graph.upstream), self.d_model, self.n_heads
        item = torch.finfo(self.dtype).bits // 8
        per_pos = n_up * d + 3 * h * d * 3
        if grad:
            per_pos += self.graph.n_layers * (3 * h * d * 4 + h * d + 4 * d * 3 + h * n_pos)
        return int(per_pos * n_pos * item)

    # --- the plain forward's node outputs ---------------------------------------------

    def node_outputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n_upstream, batch, pos, d_model): every upstream node's output in the model's own
        forward on ``tokens``, read from its hooks (input = the residual entering block 0, a
        head = its z @ W_O, an MLP = mlp_out; :func:`actstore.circuits.clean.run_node_outputs`).
        No gradient."""
        return run_node_outputs(self.model, self._tokens(tokens)).to(self.dtype)

    # --- the masked forward -------------------------------------------------------------

    def run(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        patch: torch.Tensor | None = None,
        *,
        outputs: Mapping[str, torch.Tensor] | None = None,
        embed: torch.Tensor | None = None,
        positions: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Logits (variant, batch, pos, d_vocab) of the masked forward (module docstring).

        ``mask`` (variant, n_edges) bool or float; ``patch`` (n_upstream, batch, pos, d_model),
        may be None where every mask entry is 1; ``outputs`` replaces named nodes' live
        outputs ((batch, pos, d_model) or (variant, batch, pos, d_model)); ``embed`` replaces
        the input node's. ``positions``: compute the logits at these positions only
        (variant, batch, len(positions), d_vocab), e.g. [-1] for a metric that reads the
        last one (the unembedding is most of a small model's cost). Differentiable in mask,
        patch, outputs and embed."""
        tokens = self._tokens(tokens)
        mask = self._mask(mask)
        batch, n_pos = tokens.shape
        if patch is None:
            if not bool((mask == 1).all()):
                raise ConfigError(
                    "mask cuts edges but no patch was given: pass patch=fwd.node_outputs(other_tokens), "
                    "the values cut edges read instead."
                )
            patch = torch.zeros(
                len(self.graph.upstream), 1, 1, self.d_model, device=self.device, dtype=self.dtype
            )
        elif tuple(patch.shape) != (len(self.graph.upstream), batch, n_pos, self.d_model):
            raise ConfigError(
                f"patch has shape {tuple(patch.shape)}; expected (n_upstream, batch, pos, d_model) = "
                f"{(len(self.graph.upstream), batch, n_pos, self.d_model)}, e.g. fwd.node_outputs(other_tokens)."
            )
        over = self._overrides(outputs, embed, batch, n_pos)
        if not self._checked and self_check.ENABLED:
            self._check(tokens)
        pos = None
        if positions is not None:
            pos = torch.as_tensor(list(positions), dtype=torch.long)
            if pos.ndim != 1 or len(pos) == 0 or bool(((pos < -n_pos) | (pos >= n_pos)).any()):
                raise ConfigError(
                    f"positions {list(positions)} are not positions of {n_pos}-token prompts "
                    f"(0..{n_pos - 1}, or -1 for the last)."
                )
        return self._forward(tokens, mask, patch.to(self.dtype), over, pos)

    def _forward(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        patch: torch.Tensor,
        over: dict[int, torch.Tensor],
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        model, g = self.model, self.graph
        n_var = mask.shape[0]
        batch, n_pos = tokens.shape
        shape = (n_var, batch, n_pos, self.d_model)
        # the upstream nodes so far in groups (input; each layer's heads; each MLP), as
        # (first node, live - patch of its nodes (variant, node, batch, pos, d_model));
        # psum: patch summed over every node so far
        groups: list[tuple[int, torch.Tensor]] = []
        psum = torch.zeros_like(patch[0])

        def add(live: torch.Tensor) -> None:  # live: (variant or 1, nodes, batch, pos, d_model)
            nonlocal psum
            first = groups[-1][0] + groups[-1][1].shape[1] if groups else 0
            nodes = range(first, first + live.shape[1])
            if any(i in over for i in nodes):
                live = torch.stack(
                    [over.get(i, live[:, k]).expand(shape) for k, i in enumerate(nodes)], 1
                )
            groups.append(
                (first, live.expand(n_var, *live.shape[1:]) - patch[first : first + live.shape[1]])
            )
            psum = psum + patch[first : first + live.shape[1]].sum(0)

        add(self.input_output(tokens)[None, None])
        bias = torch.zeros(self.d_model, device=self.device, dtype=self.dtype)
        per_layer = 3 * self.n_heads + 1
        for layer in range(g.n_layers):
            block = model.blocks[layer]
            first = layer * per_layer
            # (V, B, P, 3H, D)
            qkv = self._inputs(first, first + 3 * self.n_heads, mask, groups, psum + bias)
            add(self.attention(block, qkv.unflatten(-2, (self.n_heads, 3))))
            bias = bias + block.attn.b_O.to(self.dtype)
            mlp_in = self._inputs(
                first + 3 * self.n_heads, first + per_layer, mask, groups, psum + bias
            )[..., 0, :]
            add(block.mlp(block.ln2(mlp_in.flatten(0, 1))).unflatten(0, (n_var, batch))[:, None])
        final = self._inputs(len(g.downstream) - 1, len(g.downstream), mask, groups, psum + bias)[
            ..., 0, :
        ]
        if positions is not None:
            final = final[:, :, positions.to(final.device)]
        resid = model.ln_final(final.flatten(0, 1))
        logits = resid @ model.W_U.to(self.dtype) + model.b_U.to(self.dtype)
        return logits.unflatten(0, (n_var, batch))

    def _inputs(
        self,
        lo: int,
        hi: int,
        mask: torch.Tensor,
        groups: list[tuple[int, torch.Tensor]],
        base: torch.Tensor,
    ) -> torch.Tensor:
        """Downstream inputs lo..hi-1, which read the same upstream nodes (every node so far):
        (variant, batch, pos, hi - lo, d_model). Edge (node u -> input j) is number
        ``start_j + u`` (edges are destination-major, sources in forward order); ``base`` is
        what every input reads besides its edges' masked differences: the patch values of all
        its sources and the biases."""
        starts = torch.tensor([self._range[j][0] for j in range(lo, hi)], device=self.device)
        cols = [
            (
                starts[None, :]
                + torch.arange(first, first + diff.shape[1], device=self.device)[:, None],
                diff,
            )
            for first, diff in groups
        ]
        return edge_sum(mask, cols).movedim(1, -2) + base[..., None, :]

    def attention(self, block: Any, x: torch.Tensor) -> torch.Tensor:
        """Each head from its own q, k and v inputs x (V, B, P, H, 3, D): its output z @ W_O
        (V, H, B, P, D)."""
        attn, dt = block.attn, self.dtype
        h = block.ln1(x)
        q = (
            torch.einsum("vbphd,hde->vbhpe", h[..., 0, :], attn.W_Q.to(dt))
            + attn.b_Q.to(dt)[:, None]
        )
        k = (
            torch.einsum("vbphd,hde->vbhpe", h[..., 1, :], attn.W_K.to(dt))
            + attn.b_K.to(dt)[:, None]
        )
        v = (
            torch.einsum("vbphd,hde->vbhpe", h[..., 2, :], attn.W_V.to(dt))
            + attn.b_V.to(dt)[:, None]
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        n_pos = scores.shape[-1]
        causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        pattern = torch.softmax(scores.float(), -1).to(dt)
        z = pattern @ v  # (V, B, H, P, d_head)
        return torch.einsum("vbhpe,hed->vhbpd", z, attn.W_O.to(dt))

    def input_output(self, tokens: torch.Tensor) -> torch.Tensor:
        """The input node's output: the residual entering block 0 (token plus position
        embeddings), from the model's own embedding modules (the forward stops there)."""
        from ..models import CaptureDone

        seen: dict[str, torch.Tensor] = {}

        def stop(act: torch.Tensor, hook: Any) -> torch.Tensor:
            seen["x"] = act.detach()
            raise CaptureDone

        with torch.no_grad():
            try:
                self.model.run_with_hooks(tokens, fwd_hooks=[(hook_name("resid_pre", 0), stop)])
            except CaptureDone:
                pass
        return seen["x"].to(self.dtype)

    # --- checks ---------------------------------------------------------------------------

    def _check(self, tokens: torch.Tensor) -> None:
        """Once per model: the all-ones forward of one row equals the model's own logits."""
        with torch.no_grad():
            row = tokens[:1]
            want = self.model(row).detach()
            got = self._forward(
                row,
                torch.ones(1, self.graph.n_edges, device=self.device, dtype=self.dtype),
                torch.zeros(
                    len(self.graph.upstream),
                    1,
                    1,
                    self.d_model,
                    device=self.device,
                    dtype=self.dtype,
                ),
                {},
            )[0]
        check_logits(got, want, self.dtype, "its edge graph")
        self._checked = True

    def _tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return token_ids(self.model, tokens).to(self.device)

    def _mask(self, mask: torch.Tensor) -> torch.Tensor:
        mask = torch.as_tensor(mask, device=self.device)
        if mask.ndim == 1:
            mask = mask[None]
        if mask.ndim != 2 or mask.shape[1] != self.graph.n_edges:
            raise ConfigError(
                f"mask has shape {tuple(mask.shape)}; expected (variant, n_edges) with n_edges = "
                f"{self.graph.n_edges}."
            )
        return mask.to(self.dtype)

    def _overrides(
        self,
        outputs: Mapping[str, torch.Tensor] | None,
        embed: torch.Tensor | None,
        batch: int,
        n_pos: int,
    ) -> dict[int, torch.Tensor]:
        over: dict[int, torch.Tensor] = {}
        items = dict(outputs or {})
        if embed is not None:
            if "input" in items:
                raise ConfigError(
                    "pass the input node's output as embed= or as outputs['input'], not both."
                )
            items["input"] = embed
        for name, value in items.items():
            if name not in self._node:
                raise ConfigError(
                    f"no upstream node {name!r}; nodes are 'input', 'a{{L}}.h{{H}}', 'm{{L}}'."
                )
            value = torch.as_tensor(value).to(device=self.device, dtype=self.dtype)
            if tuple(value.shape[-3:]) != (batch, n_pos, self.d_model) or value.ndim not in (3, 4):
                raise ConfigError(
                    f"the output given for {name!r} has shape {tuple(value.shape)}; expected "
                    f"(batch, pos, d_model) = {(batch, n_pos, self.d_model)}, or with a variant axis first."
                )
            over[self._node[name]] = value
        return over


def check_logits(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, route: str) -> None:
    """The self-check of a forward written here: ``got``, the model's logits computed through
    ``route``, within float rounding (:func:`actstore.patching.self_check.tolerance`) of
    ``want``, the model's own forward's; EngineCheckError naming the difference otherwise."""
    tol = self_check.tolerance(got, want, float(want.abs().max()), dtype)
    err = float((got.double() - want.double()).abs().max())
    if not err <= tol:
        raise self_check.engine_error(
            f"computed the model's logits through {route} as differing by {err:.3g} "
            f"(tolerance {tol:.2g}) from its own forward",
            False,
        )


def token_ids(model: HookedModel, tokens: Any, name: str = "tokens") -> torch.Tensor:
    """``tokens`` as (batch, pos) int64 token ids the model can run (a 1-D prompt gets a
    batch axis); ConfigError naming the problem otherwise: not integers, another shape, an
    empty batch or prompt, ids outside the vocabulary, prompts beyond the context."""
    what = (
        f"{name} must be integer token ids of shape (batch, pos) (a tensor, array or nested list)"
    )
    try:
        t = torch.as_tensor(tokens)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(
            f"{what}, got {type(tokens).__name__}; tokenise the prompts first, e.g. "
            "model.to_tokens(prompts)."
        ) from None
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ConfigError(f"{what}, got {tuple(t.shape)} {t.dtype}.")
    if t.numel() == 0:
        raise ConfigError(
            f"{name} has shape {tuple(t.shape)}: pass at least one prompt of at least one token."
        )
    cfg = model.cfg
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= int(cfg.d_vocab):
        raise ConfigError(
            f"{name} holds token id {lo if lo < 0 else hi}, outside the model's vocabulary (0 to "
            f"{int(cfg.d_vocab) - 1}); tokenise the prompts with this model's tokenizer."
        )
    if t.shape[1] > int(cfg.n_ctx):
        raise ConfigError(
            f"{name} has prompts of {t.shape[1]} tokens, beyond the model's context of {int(cfg.n_ctx)}; "
            "shorten them."
        )
    return t.long()
