"""One edge of the circuit graph patched by hand with hooks, one edge per forward: the
reference of exact edge patching (tests/circuits/test_exact.py, benchmarks/bench_edges.py).

The source's clean-minus-corrupted write (embed + pos_embed, z @ W_O of one head, or
mlp_out, from run_with_cache) is added to the residual the destination reads
(resid_pre of its layer for a head's q/k/v, resid_mid for an MLP, the last resid_post
for the logits); the destination's output is read off that run (the head's
hook_q/k/v, hook_mlp_out) and written into a fresh corrupted run, so that every other
reader keeps the corrupted residual. The result: the metric of that run minus the
corrupted run's, per pair.

:func:`edge_by_input_hooks` is the same reference for the other families (and any model
whose bridge has per-head input hooks): the delta is added to the one input the edge
feeds, in one forward: a head's own q/k/v input (``blocks.L.attn.hook_{q,k,v}_input``,
switched on), the MLP's input copy (a new tensor at ``blocks.L.ln2.hook_in``), or the
final residual (``ln_final.hook_in``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from actstore.circuits.graph import Graph


def edge_by_hooks(
    bridge: Any,
    corrupted: torch.Tensor,
    clean_cache: Any,
    corrupted_cache: Any,
    corrupted_logits: torch.Tensor,
    graph: Graph,
    edge: int,
    metric: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """(batch,) metric differences of patching ``edge`` alone."""
    clean, corr = clean_cache, corrupted_cache
    u, d = graph.upstream[graph.src[edge]], graph.downstream[graph.dst[edge]]
    if u.kind == "input":
        delta = (clean["hook_embed"] + clean["hook_pos_embed"]) - (
            corr["hook_embed"] + corr["hook_pos_embed"]
        )
    elif u.kind == "head":
        w_o = bridge.blocks[u.layer].attn.W_O[u.head]
        z = f"blocks.{u.layer}.attn.hook_z"
        delta = torch.einsum("bpe,ed->bpd", clean[z][:, :, u.head], w_o) - torch.einsum(
            "bpe,ed->bpd", corr[z][:, :, u.head], w_o
        )
    else:
        delta = clean[f"blocks.{u.layer}.hook_mlp_out"] - corr[f"blocks.{u.layer}.hook_mlp_out"]
    last = bridge.cfg.n_layers - 1
    with torch.no_grad():
        if d.kind == "logits":
            logits = bridge.run_with_hooks(
                corrupted, fwd_hooks=[(f"blocks.{last}.hook_resid_post", lambda a, hook: a + delta)]
            )
        else:
            read, out = (
                (f"blocks.{d.layer}.hook_resid_mid", f"blocks.{d.layer}.hook_mlp_out")
                if d.kind == "mlp"
                else (f"blocks.{d.layer}.hook_resid_pre", f"blocks.{d.layer}.attn.hook_{d.kind}")
            )
            seen = {}

            def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
                seen["act"] = act.clone()
                return act

            def write(act: torch.Tensor, hook: Any) -> torch.Tensor:
                if d.kind == "mlp":
                    return seen["act"]
                act[:, :, d.head] = seen["act"][:, :, d.head]
                return act

            bridge.run_with_hooks(
                corrupted, fwd_hooks=[(read, lambda a, hook: a + delta), (out, keep)]
            )
            logits = bridge.run_with_hooks(corrupted, fwd_hooks=[(out, write)])
        return metric(logits) - metric(corrupted_logits)


def node_output(bridge: Any, graph: Graph, u: int, cache: Any) -> torch.Tensor:
    """Upstream node ``u``'s output in a run (its cache): the residual entering block 0, a
    head's z @ W_O, an MLP's output."""
    node = graph.upstream[u]
    if node.kind == "input":
        return cache["blocks.0.hook_resid_pre"]
    if node.kind == "mlp":
        return cache[f"blocks.{node.layer}.hook_mlp_out"]
    return (
        cache[f"blocks.{node.layer}.attn.hook_z"][:, :, node.head]
        @ bridge.blocks[node.layer].attn.W_O[node.head]
    )


def add_to_input(
    bridge: Any, graph: Graph, edge: int, corrupted: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """The corrupted run's logits with ``delta`` added to the one input ``edge`` feeds."""
    from actstore.patching.path import split_qkv_input

    d = graph.downstream[graph.dst[edge]]
    if d.kind in ("q", "k", "v"):
        name = f"blocks.{d.layer}.attn.hook_{d.kind}_input"  # (batch, pos, head, d_model): the head's own copy

        def add(act: torch.Tensor, hook: Any) -> torch.Tensor:
            act = act.clone()
            act[:, :, d.head] = act[:, :, d.head] + delta
            return act
    else:  # a new tensor: the MLP's input copy (ln2's), or the final residual, alone
        name = "ln_final.hook_in" if d.kind == "logits" else f"blocks.{d.layer}.ln2.hook_in"

        def add(act: torch.Tensor, hook: Any) -> torch.Tensor:
            return act + delta

    with split_qkv_input(bridge):
        return bridge.run_with_hooks(corrupted, fwd_hooks=[(name, add)])


def edge_by_input_hooks(
    bridge: Any,
    corrupted: torch.Tensor,
    clean_cache: Any,
    corrupted_cache: Any,
    corrupted_logits: torch.Tensor,
    graph: Graph,
    edge: int,
    metric: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """(batch,) metric differences of patching ``edge`` alone, through the input hooks."""
    u = int(graph.src[edge])
    delta = node_output(bridge, graph, u, clean_cache) - node_output(
        bridge, graph, u, corrupted_cache
    )
    with torch.no_grad():
        return metric(add_to_input(bridge, graph, edge, corrupted, delta)) - metric(
            corrupted_logits
        )
