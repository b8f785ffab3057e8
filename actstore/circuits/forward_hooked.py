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

from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError
from ..families import adapter_for
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

    def __init__(self, model: Any, graph: Any = None):
        super().__init__(model, graph)
        self.dtype = bridge_dtype(model)

    def _check_family(self, model: Any) -> None:
        adapter = check_model(model, "Circuit discovery")
        adapter.check_edge_graph(model)
        if not hasattr(model, "set_use_split_qkv_input"):
            raise ConfigError(f"circuit discovery on a {adapter.name} model reads each head's own q, k and v input, "
                              "which this model cannot hook (no set_use_split_qkv_input); load it with "
                              "TransformerBridge.")

    def row_bytes(self, n_pos: int, grad: bool = False, read: int | None = None) -> int:
        """:meth:`GraphForward.row_bytes`, and the logits of the ``read`` positions (default:
        every one)."""
        item = torch.finfo(self.dtype).bits // 8
        logits = (n_pos if read is None else read) * int(self.model.cfg.d_vocab) * item
        return super().row_bytes(n_pos, grad) + logits * (2 if grad else 1)

    # --- the masked forward -------------------------------------------------------------

    def _forward(self, tokens: torch.Tensor, mask: torch.Tensor, patch: torch.Tensor,
                 over: dict[int, torch.Tensor], positions: torch.Tensor | None = None) -> torch.Tensor:
        return self._hooked(tokens, mask, patch, over, probes=False, positions=positions)[0]

    def grads(self, tokens: torch.Tensor, metric: CircuitMetric, patch: torch.Tensor, t: float,
              embed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """At the uniform mask ``1 - t``: (d metric / d input (n_downstream, pair, pos,
        d_model), the live node outputs (n_upstream, pair, pos, d_model)), as
        ``actstore.circuits.attribution``'s residual form gives them for GPT-2."""
        if not self._checked:
            self._check(tokens[:1])
        mask = torch.full((1, self.graph.n_edges), 1.0 - t, device=self.device, dtype=self.dtype)
        over = {} if embed is None else {0: embed.to(device=self.device, dtype=self.dtype)}
        with torch.enable_grad():
            logits, live, probes = self._hooked(tokens, mask, patch.to(self.dtype), over, probes=True)
            value = metric(logits[0]).sum()
            grads = torch.autograd.grad(value, probes, allow_unused=True)
        out = []
        for p, g in zip(probes, grads):
            g = torch.zeros_like(p) if g is None else g
            # a layer's (b, pos, head, 3, d) q/k/v probe -> (head * 3, b, pos, d); (b, pos, d) -> (1, b, pos, d)
            out.append(g.permute(2, 3, 0, 1, 4).flatten(0, 1) if g.ndim == 5 else g[None])
        return torch.cat(out), live.detach()

    def edge_patches(self, tokens: torch.Tensor, edges: Sequence[int], deltas: torch.Tensor,
                     positions: Sequence[int] | None = None) -> torch.Tensor:
        """Logits (edge, batch, pos, vocab) (at ``positions`` only where given) of the run on
        ``tokens`` with, for each edge u -> d, ``deltas[u]`` (upstream, batch, pos, d_model)
        added to the one input d alone: the masked forward with that single edge cut to
        ``live_u + deltas[u]``, as one plain forward of all the edges (a head's own q/k/v
        input, the MLP's input copy, the final residual; no edge sums)."""
        g, batch = self.graph, int(tokens.shape[0])
        at: dict[str, list[tuple[int, int | None, int]]] = {}  # hook -> (variant, head, source)
        for v, e in enumerate(edges):
            d = g.downstream[int(g.dst[e])]
            name = (f"blocks.{d.layer}.attn.hook_{d.kind}_input" if d.kind in ("q", "k", "v") else
                    f"blocks.{d.layer}.ln2.hook_in" if d.kind == "mlp" else "ln_final.hook_in")
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

    def _hooked(self, tokens: torch.Tensor, mask: torch.Tensor, patch: torch.Tensor, over: dict[int, torch.Tensor],
                probes: bool, positions: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(logits (variant, batch, pos, vocab), at ``positions`` only where given; live node
        outputs of variant 0 (upstream, batch, pos, d_model); the zero probes added to every
        downstream input, in graph order). The forward stops at the final norm's input: the
        logits are the family adapter's decoding of the final residual (the model's own
        final norm and unembedding), where they are read."""
        g, H, D = self.graph, self.n_heads, self.d_model
        n_var, (batch, n_pos) = mask.shape[0], tokens.shape
        per_layer = 3 * H + 1
        groups: list[tuple[int, torch.Tensor]] = []  # (first node, live - patch (variant, nodes, batch, pos, d))
        totals: list[torch.Tensor] = [torch.zeros((), device=self.device, dtype=self.dtype)]  # running sums of those
        live0: list[torch.Tensor] = []
        probe_list: list[torch.Tensor] = []
        qkv_adjust: dict[int, torch.Tensor] = {}

        def rows(x: torch.Tensor) -> torch.Tensor:  # (variant * batch, ...) -> (variant, batch, ...)
            return x.unflatten(0, (n_var, batch))

        def add_group(live: torch.Tensor) -> torch.Tensor:
            """Add the next nodes' outputs (variant, nodes, batch, pos, d), replaced where
            ``over`` says; return the outputs used."""
            first = groups[-1][0] + groups[-1][1].shape[1] if groups else 0
            nodes = range(first, first + live.shape[1])
            if any(i in over for i in nodes):
                live = torch.stack([over[i].expand(n_var, batch, n_pos, D) if i in over else live[:, k]
                                    for k, i in enumerate(nodes)], 1)
            live0.extend(live[0].unbind(0))
            diff = live - patch[first:first + live.shape[1]]
            groups.append((first, diff))
            totals.append(totals[-1] + diff.sum(1))
            return live

        def adjust(lo: int, hi: int, n_groups: int) -> torch.Tensor:
            """(variant, batch, pos, hi - lo, d): sum over the inputs' edges of (mask - 1) * (live - patch)."""
            return self._inputs(lo, hi, mask, groups[:n_groups], -totals[n_groups])

        def probe(shape: tuple[int, ...]) -> torch.Tensor | None:
            if not probes:
                return None
            p = torch.zeros(shape, device=self.device, dtype=self.dtype, requires_grad=True)
            probe_list.append(p)
            return p

        def input_node(act: torch.Tensor, hook: Any) -> torch.Tensor:
            if 0 in over:
                act = over[0].expand(n_var, batch, n_pos, D).reshape(act.shape).to(act.dtype)
            add_group(rows(act)[:, None])
            return act

        def qkv_input(layer: int, c: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
            first = layer * per_layer

            def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:  # (variant * batch, pos, head, d)
                if layer not in qkv_adjust:
                    a = adjust(first, first + 3 * H, len(groups)).unflatten(-2, (H, 3))  # (v, b, pos, head, 3, d)
                    p = probe((batch, n_pos, H, 3, D))
                    qkv_adjust[layer] = a if p is None else a + p
                return act + qkv_adjust[layer][..., c, :].flatten(0, 1).to(act.dtype)
            return fn

        replaced: dict[int, torch.Tensor] = {}  # layer -> replaced minus own head outputs, summed over heads

        def heads(layer: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
            w_o = self.model.blocks[layer].attn.W_O.to(self.dtype)  # (head, d_head, d)

            def fn(z: torch.Tensor, hook: Any) -> torch.Tensor:  # (variant * batch, pos, head, d_head)
                own = torch.einsum("vbphe,hed->vhbpd", rows(z).to(self.dtype), w_o)
                used = add_group(own)
                if used is not own:  # replaced outputs join the residual in place of the own ones
                    replaced[layer] = (used - own).sum(1).flatten(0, 1)
                return z
            return fn

        def attn_out(layer: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
            def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
                return act + replaced[layer].to(act.dtype) if layer in replaced else act
            return fn

        def mlp_input(layer: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
            j = layer * per_layer + 3 * H

            def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
                n_groups = len(groups) - 1 if g.parallel else len(groups)  # (parallel: not its own layer's heads)
                a = adjust(j, j + 1, n_groups)[..., 0, :]
                p = probe((batch, n_pos, D))
                return act + (a if p is None else a + p).flatten(0, 1).to(act.dtype)
            return fn

        def mlp_output(layer: int) -> Callable[[torch.Tensor, Any], torch.Tensor]:
            node = (layer + 1) * (H + 1)

            def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
                add_group(rows(act).to(self.dtype)[:, None])
                if node in over:
                    return over[node].expand(n_var, batch, n_pos, D).reshape(act.shape).to(act.dtype)
                return act
            return fn

        resid: list[torch.Tensor] = []

        def final(act: torch.Tensor, hook: Any) -> torch.Tensor:
            j = len(g.downstream) - 1
            a = adjust(j, j + 1, len(groups))[..., 0, :]
            p = probe((batch, n_pos, D))
            resid.append(act + (a if p is None else a + p).flatten(0, 1).to(act.dtype))
            raise CaptureDone

        hooks: list[Hook] = [(hook_name("resid_pre", 0), input_node)]
        for layer in range(g.n_layers):
            hooks += [(f"blocks.{layer}.attn.hook_{c}_input", qkv_input(layer, i)) for i, c in enumerate("qkv")]
            hooks.append((hook_name("z", layer), heads(layer)))
            if any(1 + layer * (H + 1) + h in over for h in range(H)):
                hooks.append((hook_name("attn_out", layer), attn_out(layer)))
            hooks += [(f"blocks.{layer}.ln2.hook_in", mlp_input(layer)), (hook_name("mlp_out", layer),
                                                                          mlp_output(layer))]
        hooks.append(("ln_final.hook_in", final))
        with split_qkv_input(self.model):
            try:
                self.model.run_with_hooks(tokens.repeat(n_var, 1), fwd_hooks=hooks)
            except CaptureDone:
                pass
        if not resid:
            raise RuntimeError("the model's forward never reached ln_final.hook_in; its bridge runs another way.")
        x = resid[0] if positions is None else resid[0][:, positions.to(resid[0].device)]
        logits = adapter_for(self.model).logits(self.model, x)
        return rows(logits), torch.stack(live0), probe_list
