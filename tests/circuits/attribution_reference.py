"""Hook-based references for edge attribution, written on the plain model (no GraphForward):

- :func:`node_outputs`: every upstream node's output of a run (z times W_O per head, the
  embeddings, mlp_out), read with run_with_hooks;
- :func:`shifted_metric`: the metric of a run in which one downstream input (a head's
  q, k or v input, an MLP's input, or the final residual) reads ``shift`` more than it
  does (the head's projection of ``ln1(resid_pre + shift)`` written into its hook_q/k/v,
  ``ln2(resid_mid + shift)`` into the MLP's input, ``shift`` added before ln_final);
  ``embed=`` replaces the input node's output (blocks.0.hook_resid_pre);
- :func:`edge_derivative`: the central difference of that in the shift's size, float64:
  ``d metric / d eps`` of the edge's input moved by ``eps * delta``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from actstore.circuits.graph import Graph, Input


def node_outputs(
    model: Any, tokens: torch.Tensor, embed: torch.Tensor | None = None
) -> torch.Tensor:
    """(upstream, batch, pos, d_model) in graph order, from one run (``embed``: the input node's output)."""
    L = int(model.cfg.n_layers)
    acts: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., Any]:
        def fn(act: torch.Tensor, hook: Any) -> Any:
            if name == "blocks.0.hook_resid_pre" and embed is not None:
                act = embed.clone()
            acts[name] = act.detach().clone()
            return act

        return fn

    names = ["blocks.0.hook_resid_pre"] + [
        f"blocks.{i}.{h}" for i in range(L) for h in ("attn.hook_z", "hook_mlp_out")
    ]
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(n, keep(n)) for n in names])
        out = [acts["blocks.0.hook_resid_pre"]]
        for i in range(L):
            z, w_o = acts[f"blocks.{i}.attn.hook_z"], model.W_O[i]
            out += [z[:, :, h] @ w_o[h] for h in range(int(model.cfg.n_heads))] + [
                acts[f"blocks.{i}.hook_mlp_out"]
            ]
        return torch.stack(out)


def shifted_metric(
    model: Any,
    tokens: torch.Tensor,
    metric: Callable[[torch.Tensor], torch.Tensor],
    d: Input,
    shift: torch.Tensor,
    embed: torch.Tensor | None = None,
) -> torch.Tensor:
    """(batch,) metric with downstream input ``d`` reading ``shift`` (batch, pos, d_model) more."""
    seen: dict[str, torch.Tensor] = {}
    hooks: list[tuple[str, Callable[..., Any]]] = []
    if embed is not None:
        hooks.append(("blocks.0.hook_resid_pre", lambda act, hook: embed.clone()))

    def keep(name: str) -> Callable[..., Any]:
        def fn(act: torch.Tensor, hook: Any) -> None:
            seen[name] = act.detach().clone()

        return fn

    if d.kind in ("q", "k", "v"):
        blk, h = model.blocks[d.layer], d.head
        w, b = (
            getattr(blk.attn, f"W_{d.kind.upper()}")[h],
            getattr(blk.attn, f"b_{d.kind.upper()}")[h],
        )

        def head_input(act: torch.Tensor, hook: Any) -> torch.Tensor:
            act = act.clone()
            act[:, :, h] = blk.ln1(seen["resid"] + shift) @ w + b
            return act

        hooks += [
            (f"blocks.{d.layer}.hook_resid_pre", keep("resid")),
            (f"blocks.{d.layer}.attn.hook_{d.kind}", head_input),
        ]
    elif d.kind == "mlp":
        blk = model.blocks[d.layer]
        hooks += [
            (f"blocks.{d.layer}.hook_resid_mid", keep("resid")),
            (f"blocks.{d.layer}.mlp.hook_in", lambda act, hook: blk.ln2(seen["resid"] + shift)),
        ]
    else:
        hooks.append(("ln_final.hook_in", lambda act, hook: act + shift))
    with torch.no_grad():
        return metric(model.run_with_hooks(tokens, fwd_hooks=hooks))


def edge_derivative(
    model: Any,
    tokens: torch.Tensor,
    metric: Callable[[torch.Tensor], torch.Tensor],
    graph: Graph,
    edge: int,
    delta: torch.Tensor,
    eps: float = 1e-4,
    embed: torch.Tensor | None = None,
) -> torch.Tensor:
    """(batch,) central difference of the metric in ``eps``, edge ``edge``'s input moved
    by ``eps * delta[src]`` (delta: (upstream, batch, pos, d_model))."""
    d = graph.downstream[int(graph.dst[edge])]
    u = delta[int(graph.src[edge])]
    up = shifted_metric(model, tokens, metric, d, eps * u, embed)
    down = shifted_metric(model, tokens, metric, d, -eps * u, embed)
    return (up - down) / (2 * eps)
