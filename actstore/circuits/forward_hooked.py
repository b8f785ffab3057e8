"""The graph's masked forward (:mod:`actstore.circuits.forward`) made of the model's own
forward and hooks, for the families whose blocks actstore does not compute by hand
(GPT-NeoX / Pythia, and Llama, Qwen 2, Mistral with one key/value head per head).

Each downstream input d must read ``sum over its edges e = (u -> d) of mask[v, e] * live_u
+ (1 - mask[v, e]) * patch[u]`` plus the biases. The model's own value at d's hook is
``sum over u of live_u`` plus the biases (the residual stream is the sum of the nodes'
outputs, which the adapter's ``check_edge_graph`` guarantees), so the hook adds

    sum over e of (mask[v, e] - 1) * (live_u - patch[u])

to it, and to d's own copy only: a head's q, k and v inputs are the model's per-head
input hooks (``blocks.L.attn.hook_{q,k,v}_input``, switched on for the run), an MLP's
input is ``blocks.L.ln2.hook_in`` and the logits' ``ln_final.hook_in``, each given a new
tensor (so the residual stream itself is not changed). ``live_u`` are read in the same
forward: the input node at ``blocks.0.hook_resid_pre``, a head as its ``hook_z`` times
``W_O``, an MLP at ``hook_mlp_out``. Variants run in the batch dimension (row ``v *
batch + b``). Replacing a node's output (``outputs``, ``embed``) replaces it where it
joins the residual too (``hook_attn_out`` gets the heads' difference). Everything is
differentiable in mask, patch, outputs and embed; :meth:`HookedGraphForward.grads` gives
the input gradients at a uniform mask that edge attribution reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import ConfigError
from ..families import adapter_for
from ..model_protocol import HookedModel
from ..models import CaptureDone, bridge_dtype
from ..patching.engine import check_model
from ..patching.path import split_qkv_input
from ..sites import hook_name
from .forward import GraphForward
from .metrics import CircuitMetric

__all__ = ["HookedGraphForward"]

Hook = tuple[str, Callable[[torch.Tensor, Any], torch.Tensor]]


class HookedGraphForward(GraphForward):
    """:class:`GraphForward` on the model's own forward (module docstring)."""

    hand_run = False

    def __init__(self, model: HookedModel, graph: Any = None):
        super().__init__(model, graph)
        self.dtype = bridge_dtype(model)

    def _check_family(self, model: HookedModel) -> None:
        adapter = check_model(model, "Circuit discovery")
        adapter.check_edge_graph(model)
        if not hasattr(model, "set_use_split_qkv_input"):
            raise ConfigError(
                f"circuit discovery on a {adapter.name} model reads each head's own q, k and v input, "
                "which this model cannot hook (no set_use_split_qkv_input); load it with "
                "TransformerBridge."
            )

    def row_bytes(self, n_pos: int, grad: bool = False, read: int | None = None) -> int:
        """:meth:`GraphForward.row_bytes`, and the logits of the ``read`` positions (default:
        every one)."""
        item = torch.finfo(self.dtype).bits // 8
        logits = (n_pos if read is None else read) * int(self.model.cfg.d_vocab) * item
        return super().row_bytes(n_pos, grad) + logits * (2 if grad else 1)

    # --- the masked forward -------------------------------------------------------------

    def _forward(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        patch: torch.Tensor,
        over: dict[int, torch.Tensor],
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._hooked(tokens, mask, patch, over, probes=False, positions=positions)[0]

    def grads(
        self,
        tokens: torch.Tensor,
        metric: CircuitMetric,
        patch: torch.Tensor,
        t: float,
        embed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """At the uniform mask ``1 - t``: (d metric / d input (n_downstream, pair, pos,
        d_model), the live node outputs (n_upstream, pair, pos, d_model)), as
        ``actstore.circuits.attribution``'s residual form gives them for GPT-2."""
        if not self._checked:
            self._check(tokens[:1])
        mask = torch.full((1, self.graph.n_edges), 1.0 - t, device=self.device, dtype=self.dtype)
        over = {} if embed is None else {0: embed.to(device=self.device, dtype=self.dtype)}
        with torch.enable_grad():
            logits, live, probes = self._hooked(
                tokens, mask, patch.to(self.dtype), over, probes=True
            )
            value = metric(logits[0]).sum()
            grads = torch.autograd.grad(value, probes, allow_unused=True)
        out = []
        for p, g in zip(probes, grads):
            g = torch.zeros_like(p) if g is None else g
            # a layer's (b, pos, head, 3, d) q/k/v probe -> (head * 3, b, pos, d); (b, pos, d) -> (1, b, pos, d)
            out.append(g.permute(2, 3, 0, 1, 4).flatten(0, 1) if g.ndim == 5 else g[None])
        return torch.cat(out), live.detach()

    def edge_patches(
        self,
        tokens: torch.Tensor,
        edges: Sequence[int],
        deltas: torch.Tensor,
        positions: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Logits (edge, batch, pos, vocab) (at ``positions`` only where given) of the run on
        ``tokens`` with, for each edge u -> d, ``deltas[u]`` (upstream, batch, pos, d_model)
        added to the one input d alone: the masked forward with that single edge cut to
        ``live_u + deltas[u]``, as one plain forward of all the edges (a head's own q/k/v
        input, the MLP's input copy, the final residual; no edge sums)."""
        g, batch = self.graph, int(tokens.shape[0])
        at: dict[str, list[tuple[int, int | None, int]]] = {}  # hook -> (variant, head, source)
        for v, e in enumerate(edges):
            d = g.downstream[int(g.dst[e])]
            name = (
                f"blocks.{d.layer}.attn.hook_{d.kind}_input"
                if d.kind in ("q", "k", "v")
                else f"blocks.{d.layer}.ln2.hook_in"
                if d.kind == "mlp"
                else "ln_final.hook_in"
            )
            at.setdefault(name, []).append((v, d.head, int(g.src[e])))
        resid: list[torch.Tensor] = []

        def add(name: str) -> Callable[[torch.Tensor, Any], torch.Tensor]:
            def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
                act = act.clone()  # a new tensor: the input's own copy, not the residual stream
                for v, head, u in at[name]:
                    rows = slice(v * batch, (v + 1) * batch)
                    if head is None:
                        act[rows] += deltas[u].to(act.dtype)
                    else:
                        act[rows, :, head] += deltas[u].to(act.dtype)
                if name == "ln_final.hook_in":
                    resid.append(act)
                    raise CaptureDone
                return act

            return fn

        def stop(act: torch.Tensor, hook: Any) -> torch.Tensor:
            resid.append(act)
            raise CaptureDone

        hooks: list[Hook] = [(name, add(name)) for name in at]
        if "ln_final.hook_in" not in at:
            hooks.append(("ln_final.hook_in", stop))
        with torch.no_grad(), split_qkv_input(self.model):
            try:
                self.model.run_with_hooks(tokens.repeat(len(edges), 1), fwd_hooks=hooks)
            except CaptureDone:
                pass
        x = resid[0] if positions is None else resid[0][:, list(positions)]
        return adapter_for(self.model).logits(self.model, x).unflatten(0, (len(edges), batch))

    def _hooked(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        patch: torch.Tensor,
        over: dict[int, torch.Tensor],
        probes: bool,
        positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(logits (variant, batch, pos, vocab), at ``positions`` only where given; live node
        outputs of variant 0 (upstream, batch, pos, d_model); the zero probes added to every
        downstream input, in graph order). The forward stops at the final norm's input: the
        logits are the family adapter's decoding of the final residual (the model's own
        final norm and unembedding), where they are read."""
        run = _MaskedRun(self, tokens, mask, patch, over, probes)
        with split_qkv_input(self.model):
            try:
                self.model.run_with_hooks(tokens.repeat(run.n_var, 1), fwd_hooks=run.hooks())
            except CaptureDone:
                pass
        if not run.resid:
            raise RuntimeError(
                "the model's forward never reached ln_final.hook_in; its bridge runs another way."
            )
        x = (
            run.resid[0]
            if positions is None
            else run.resid[0][:, positions.to(run.resid[0].device)]
        )
        logits = adapter_for(self.model).logits(self.model, x)
        return run.rows(logits), torch.stack(run.live0), run.probe_list


class _MaskedRun:
    """One masked forward of :meth:`HookedGraphForward._hooked`: its hooks, and what they
    share: the node outputs read so far, in groups as the forward reaches them (live -
    patch, with running sums), from which each downstream input's adjustment is made."""

    def __init__(
        self,
        fwd: HookedGraphForward,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        patch: torch.Tensor,
        over: dict[int, torch.Tensor],
        probes: bool,
    ):
        self.fwd, self.g, self.mask, self.patch, self.over, self.with_probes = (
            fwd,
            fwd.graph,
            mask,
            patch,
            over,
            probes,
        )
        self.H, self.D, self.dtype = fwd.n_heads, fwd.d_model, fwd.dtype
        self.n_var, (self.batch, self.n_pos) = mask.shape[0], tokens.shape
        self.per_layer = 3 * self.H + 1
        self.groups: list[
            tuple[int, torch.Tensor]
        ] = []  # (first node, live - patch (variant, nodes, batch, pos, d))
        # running sums
        self.totals: list[torch.Tensor] = [torch.zeros((), device=fwd.device, dtype=fwd.dtype)]
        self.live0: list[torch.Tensor] = []
        self.probe_list: list[torch.Tensor] = []
        self.qkv_adjust: dict[int, torch.Tensor] = {}
        self.replaced: dict[
            int, torch.Tensor
        ] = {}  # layer -> replaced minus own head outputs, summed over heads
        self.resid: list[torch.Tensor] = []  # the final residual, adjusted

    def hooks(self) -> list[Hook]:
        """The forward hooks, in the order the forward reaches them."""
        g, H = self.g, self.H
        hooks: list[Hook] = [(hook_name("resid_pre", 0), self.input_node)]
        for layer in range(g.n_layers):
            hooks += [
                (f"blocks.{layer}.attn.hook_{c}_input", self.qkv_input(layer, i))
                for i, c in enumerate("qkv")
            ]
            hooks.append((hook_name("z", layer), self.heads(layer)))
            if any(1 + layer * (H + 1) + h in self.over for h in range(H)):
                hooks.append((hook_name("attn_out", layer), self.attn_out(layer)))
            hooks += [
                (f"blocks.{layer}.ln2.hook_in", self.mlp_input(layer)),
                (hook_name("mlp_out", layer), self.mlp_output(layer)),
            ]
        hooks.append(("ln_final.hook_in", self.final))
        return hooks

    # --- what the hooks share -----------------------------------------------------------

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """(variant * batch, ...) -> (variant, batch, ...)."""
        return x.unflatten(0, (self.n_var, self.batch))

    def _over(self, node: int, shape: torch.Size) -> torch.Tensor:
        """``over[node]`` (batch, pos, d) for every variant, in the hook's ``shape``."""
        return self.over[node].expand(self.n_var, self.batch, self.n_pos, self.D).reshape(shape)

    def add_group(self, live: torch.Tensor) -> torch.Tensor:
        """Add the next nodes' outputs (variant, nodes, batch, pos, d), replaced where
        ``over`` says; return the outputs used."""
        groups, over = self.groups, self.over
        first = groups[-1][0] + groups[-1][1].shape[1] if groups else 0
        nodes = range(first, first + live.shape[1])
        if any(i in over for i in nodes):
            live = torch.stack(
                [
                    over[i].expand(self.n_var, self.batch, self.n_pos, self.D)
                    if i in over
                    else live[:, k]
                    for k, i in enumerate(nodes)
                ],
                1,
            )
        self.live0.extend(live[0].unbind(0))
        diff = live - self.patch[first : first + live.shape[1]]
        groups.append((first, diff))
        self.totals.append(self.totals[-1] + diff.sum(1))
        return live

    def adjust(self, lo: int, hi: int, n_groups: int) -> torch.Tensor:
        """(variant, batch, pos, hi - lo, d): sum over the inputs' edges of (mask - 1) * (live - patch)."""
        return self.fwd._inputs(lo, hi, self.mask, self.groups[:n_groups], -self.totals[n_groups])

    def probe(self, shape: tuple[int, ...]) -> torch.Tensor | None:
        """A zero tensor added to a downstream input, whose gradient edge attribution reads
        (None without probes)."""
        if not self.with_probes:
            return None
        p = torch.zeros(shape, device=self.fwd.device, dtype=self.dtype, requires_grad=True)
        self.probe_list.append(p)
        return p

    def _adjusted(self, act: torch.Tensor, j: int, n_groups: int) -> torch.Tensor:
        """``act`` (variant * batch, pos, d), the input of downstream node ``j``, adjusted
        (and probed)."""
        a = self.adjust(j, j + 1, n_groups)[..., 0, :]
        p = self.probe((self.batch, self.n_pos, self.D))
        return act + (a if p is None else a + p).flatten(0, 1).to(act.dtype)

    # --- the hooks ------------------------------------------------------------------------

    def input_node(self, act: torch.Tensor, hook: Any) -> torch.Tensor:
        """blocks.0.hook_resid_pre: the input node's output (replaced where ``over`` says)."""
        if 0 in self.over:
            act = self._over(0, act.shape).to(act.dtype)
        self.add_group(self.rows(act)[:, None])
        return act

    def qkv_input(self, layer: int, c: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        """The layer's heads' q (c = 0), k (1) or v (2) inputs, adjusted."""
        first, H, D = layer * self.per_layer, self.H, self.D

        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:  # (variant * batch, pos, head, d)
            if layer not in self.qkv_adjust:
                # (v, b, pos, head, 3, d)
                a = self.adjust(first, first + 3 * H, len(self.groups)).unflatten(-2, (H, 3))
                p = self.probe((self.batch, self.n_pos, H, 3, D))
                self.qkv_adjust[layer] = a if p is None else a + p
            return act + self.qkv_adjust[layer][..., c, :].flatten(0, 1).to(act.dtype)

        return fn

    def heads(self, layer: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        """hook_z: the layer's head outputs (z times W_O), read as nodes."""
        w_o = self.fwd.model.blocks[layer].attn.W_O.to(self.dtype)  # (head, d_head, d)

        def fn(z: torch.Tensor, hook: Any) -> torch.Tensor:  # (variant * batch, pos, head, d_head)
            own = torch.einsum("vbphe,hed->vhbpd", self.rows(z).to(self.dtype), w_o)
            used = self.add_group(own)
            if used is not own:  # replaced outputs join the residual in place of the own ones
                self.replaced[layer] = (used - own).sum(1).flatten(0, 1)
            return z

        return fn

    def attn_out(self, layer: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        """hook_attn_out: plus the replaced heads' difference."""

        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            return act + self.replaced[layer].to(act.dtype) if layer in self.replaced else act

        return fn

    def mlp_input(self, layer: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        """ln2.hook_in: the MLP's own copy of its input, adjusted."""
        j = layer * self.per_layer + 3 * self.H

        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            # (parallel: not its own heads)
            n_groups = len(self.groups) - 1 if self.g.parallel else len(self.groups)
            return self._adjusted(act, j, n_groups)

        return fn

    def mlp_output(self, layer: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        """hook_mlp_out: the MLP node's output, read (replaced where ``over`` says)."""
        node = (layer + 1) * (self.H + 1)

        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
            self.add_group(self.rows(act).to(self.dtype)[:, None])
            if node in self.over:
                return self._over(node, act.shape).to(act.dtype)
            return act

        return fn

    def final(self, act: torch.Tensor, hook: Any) -> torch.Tensor:
        """ln_final.hook_in: the final residual, adjusted, kept; the forward stops here."""
        self.resid.append(self._adjusted(act, len(self.g.downstream) - 1, len(self.groups)))
        raise CaptureDone
