"""Faithfulness of circuits: the metric with every edge outside the circuit corrupted.

A circuit run is a forward on the clean prompts in which every downstream input reads
its circuit edges' upstream outputs live and every other edge's output from the
corrupted run (:meth:`GraphForward.run` with the circuit's edges as the mask and the
corrupted run's node outputs as the patch). Its faithfulness is

    (m(circuit) - m(corrupted)) / (m(clean) - m(corrupted))

1 for the full graph, 0 for the empty one; ``m(clean)`` and ``m(corrupted)`` are the
metric of the model's own forwards. Each circuit is one mask row, so a faithfulness
curve (one circuit per size) runs in the batch dimension: a few forwards, chunked to
the memory budget. Per pair as well as aggregated: the aggregate is the ratio of the
means over pairs (as `actstore patch`'s normalised values).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Int

from ..errors import ConfigError
from ..model_protocol import HookedModel
from .circuit import Selection, select_circuit
from .graph import Graph

__all__ = ["Faithfulness", "faithfulness", "faithfulness_curve", "default_sizes"]

Metric = Callable[[torch.Tensor], torch.Tensor]  # logits (batch, pos, d_vocab) -> (batch,)


@dataclass
class Faithfulness:
    """Circuit metrics of ``size`` circuits over ``pair`` prompt pairs."""

    sizes: np.ndarray  # (size,) edges selected (before pruning); for given masks, their edge counts
    n_edges: np.ndarray  # (size,) edges of each circuit (after pruning)
    metric: np.ndarray  # (size, pair) the metric of each circuit run
    clean: np.ndarray  # (pair,) the metric of the clean forward
    corrupted: np.ndarray  # (pair,) and of the corrupted one

    @property
    def per_pair(self) -> np.ndarray:
        """(size, pair): (m(circuit) - m(corrupted)) / (m(clean) - m(corrupted)) of each pair."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return (self.metric - self.corrupted) / (self.clean - self.corrupted)

    @classmethod
    def concat(cls, parts: Sequence[Faithfulness]) -> Faithfulness:
        """One result of the same circuits over several batches of pairs, in order."""
        first = parts[0]
        if any(not np.array_equal(p.n_edges, first.n_edges) for p in parts):
            raise ConfigError(
                "the parts measure different circuits; concatenate runs of the same masks only."
            )
        return cls(
            first.sizes,
            first.n_edges,
            np.concatenate([p.metric for p in parts], 1),
            np.concatenate([p.clean for p in parts]),
            np.concatenate([p.corrupted for p in parts]),
        )

    @property
    def mean(self) -> np.ndarray:
        """(size,): the same of the means over pairs."""
        return (self.metric.mean(1) - self.corrupted.mean()) / (
            self.clean.mean() - self.corrupted.mean()
        )


def default_sizes(n_edges: int, n: int = 16) -> list[int]:
    """0, then about ``n`` sizes spaced geometrically up to ``n_edges`` (the full graph)."""
    return sorted(
        {0, n_edges, *np.unique(np.geomspace(1, n_edges, n).round().astype(int)).tolist()}
    )


def _forward(model: HookedModel, forward: Any, graph: Graph | None) -> Any:
    from .forward import GraphForward

    if forward is None:
        return GraphForward(model, graph)
    if graph is not None and (forward.graph.n_layers, forward.graph.n_heads) != (
        graph.n_layers,
        graph.n_heads,
    ):
        raise ConfigError("the graph and the forward's graph differ; pass one of them.")
    return forward


def faithfulness(
    model: HookedModel,
    clean_tokens: Int[torch.Tensor, "pair pos"],
    corrupted_tokens: Int[torch.Tensor, "pair pos"],
    metric: Metric,
    masks: Any,
    *,
    forward: Any = None,
    graph: Graph | None = None,
    memory_budget: int | None = None,
    progress: bool = True,
    sizes: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
) -> Faithfulness:
    """The metric of each circuit in ``masks`` ((size, n_edges) bool, one row a circuit)
    on the clean prompts with every other edge corrupted; see the module docstring.
    ``metric`` maps logits (pair, pos, d_vocab) to (pair,), for the whole batch of pairs.
    ``forward``: a :class:`~actstore.circuits.forward.GraphForward` of ``model`` to reuse.
    ``positions``: the circuit runs compute the logits at these positions only (e.g. [-1]
    for a metric of the last position), which ``metric`` then receives."""
    from tqdm.auto import tqdm

    from ..patching.engine import default_memory_budget

    fwd = _forward(model, forward, graph)
    g = fwd.graph
    masks = torch.as_tensor(np.asarray(masks), dtype=torch.bool)
    if masks.ndim != 2 or masks.shape[1] != g.n_edges:
        raise ConfigError(
            f"masks have shape {tuple(masks.shape)}; expected (circuits, {g.n_edges}): one row of "
            "edge flags per circuit."
        )
    if clean_tokens.shape != corrupted_tokens.shape or clean_tokens.ndim != 2:
        raise ConfigError(
            f"clean tokens {tuple(clean_tokens.shape)} and corrupted {tuple(corrupted_tokens.shape)}: "
            "expected both (pair, pos), the same shape."
        )
    device = next(model.parameters()).device
    clean, corrupted = clean_tokens.to(device), corrupted_tokens.to(device)
    n_pairs, n_pos = clean.shape
    budget = memory_budget or default_memory_budget(device)
    if sizes is not None and len(sizes) != len(masks):
        raise ConfigError(
            f"{len(sizes)} sizes for {len(masks)} circuits; give one size per mask row, or none."
        )
    # the logits each row returns, float32 at most
    n_out = n_pos if positions is None else len(positions)
    row = fwd.row_bytes(n_pos) + n_out * int(model.cfg.d_vocab) * 4
    per_chunk = max(1, budget // max(1, row * n_pairs))  # circuits a forward
    values = torch.empty(len(masks), n_pairs, dtype=torch.float64)
    with torch.no_grad():
        base = [metric(model(t)).double().cpu() for t in (clean, corrupted)]
        patch = fwd.node_outputs(corrupted)
        starts = range(0, len(masks), per_chunk)
        for a in tqdm(
            starts, desc="circuit runs", unit="forward", disable=not progress or len(starts) < 2
        ):
            # (circuit, pair, pos or len(positions), d_vocab)
            logits = fwd.run(clean, masks[a : a + per_chunk].to(device), patch, positions=positions)
            for i, row in enumerate(logits):
                values[a + i] = metric(row).double().cpu()
            del logits
    counts = masks.sum(1).numpy()
    return Faithfulness(
        np.asarray(sizes if sizes is not None else counts),
        counts,
        values.numpy(),
        base[0].numpy(),
        base[1].numpy(),
    )


def faithfulness_curve(
    model: HookedModel,
    clean_tokens: Int[torch.Tensor, "pair pos"],
    corrupted_tokens: Int[torch.Tensor, "pair pos"],
    metric: Metric,
    scores: Any,
    sizes: Sequence[int] | None = None,
    *,
    how: Selection = "top-n",
    absolute: bool = True,
    forward: Any = None,
    graph: Graph | None = None,
    memory_budget: int | None = None,
    progress: bool = True,
    positions: Sequence[int] | None = None,
) -> Faithfulness:
    """Faithfulness of the circuits of ``scores`` at each size (edges selected by ``how``,
    then pruned; default :func:`default_sizes`), all in a handful of batched forwards."""
    fwd = _forward(model, forward, graph)
    sizes = default_sizes(fwd.graph.n_edges) if sizes is None else [int(n) for n in sizes]
    masks = np.stack(
        [select_circuit(fwd.graph, scores, n, how=how, absolute=absolute).mask for n in sizes]
    )
    return faithfulness(
        model,
        clean_tokens,
        corrupted_tokens,
        metric,
        masks,
        forward=fwd,
        memory_budget=memory_budget,
        progress=progress,
        sizes=sizes,
        positions=positions,
    )
