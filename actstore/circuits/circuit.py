"""Circuits from edge scores: the top-n edges, or EAP-IG's greedy search grown from the
logits, pruned to the edges on a path from ``input`` to ``logits``.

A circuit is a set of edges of a :class:`~actstore.circuits.graph.Graph`. Selection picks
``n`` edges by score (by absolute value unless ``absolute=False``); pruning then keeps an
edge ``u->d`` only if ``u`` is reached from ``input`` through selected edges and the node
that reads ``d`` (a head's q, k and v inputs all belong to the head ``a{L}.h{H}``) reaches
``logits`` through them. Edges that pruning drops carry nothing from the input to the
logits: an edge whose source is not reached reads that node's corrupted output anyway,
and an edge into a node that reaches no kept edge changes nothing the logits read.

    circuit = select_circuit(graph, scores, 50)              # top 50 by |score|, pruned
    circuit = select_circuit(graph, scores, 50, how="greedy")
    circuit.edges, circuit.nodes, circuit.n_selected, circuit.n_edges
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError
from .graph import Graph

__all__ = ["Circuit", "select_circuit", "select_edges", "prune", "SELECTIONS"]

SELECTIONS = ("top-n", "greedy")
Selection = Literal["top-n", "greedy"]


@dataclass(frozen=True)
class Circuit:
    """Edges of ``graph`` (sorted edge numbers) and the nodes they join."""

    graph: Graph
    edges: np.ndarray  # (edge,) int64, sorted: the circuit after pruning
    # upstream nodes on a kept edge, in forward order, then 'logits' if any edge is kept
    nodes: tuple[str, ...]
    n_selected: int  # edges chosen before pruning
    how: str = "top-n"

    @property
    def n_edges(self) -> int:
        """Edges after pruning."""
        return int(len(self.edges))

    @property
    def mask(self) -> np.ndarray:
        """(edge,) bool over the whole graph: True on the circuit's edges."""
        m = np.zeros(self.graph.n_edges, dtype=bool)
        m[self.edges] = True
        return m

    @property
    def names(self) -> list[str]:
        return [self.graph.names[i] for i in self.edges]


def _as_scores(graph: Graph, scores: Any) -> np.ndarray:
    s = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores, dtype=np.float64)
    if s.shape != (graph.n_edges,):
        raise ConfigError(
            f"scores have shape {s.shape}; the graph has {graph.n_edges} edges: pass one score per edge "
            "(edge_attribution's or exact_edge_scores' result, not per_pair)."
        )
    if not np.isfinite(s).all():
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ConfigError(
            f"score of edge {graph.names[bad]!r} is {s[bad]}; every score must be finite (recompute "
            "the scores, e.g. in float32 rather than float16)."
        )
    return s


def _check_n(graph: Graph, n: int) -> None:
    if not 0 <= n <= graph.n_edges:
        raise ConfigError(
            f"a circuit of {n} edges: the graph has {graph.n_edges}; pick n from 0 to {graph.n_edges}."
        )


def _reader_nodes(graph: Graph) -> np.ndarray:
    """(downstream,) the upstream index of the node that reads each input; len(upstream) for logits."""
    index = {u.name: i for i, u in enumerate(graph.upstream)}
    return np.asarray(
        [index.get(d.node, len(graph.upstream)) for d in graph.downstream], dtype=np.int64
    )


def _ranked(scores: np.ndarray, absolute: bool) -> np.ndarray:
    """Keys, larger first: |score| or score; ties keep edge order (a stable sort)."""
    return np.abs(scores) if absolute else scores


def select_edges(
    graph: Graph, scores: Any, n: int, *, how: Selection = "top-n", absolute: bool = True
) -> np.ndarray:
    """The ``n`` edges chosen before pruning (sorted edge numbers).

    ``top-n``: the n best-scoring edges. ``greedy`` (EAP-IG's ``apply_greedy``): start
    from the logits; repeatedly add the best-scoring edge whose downstream node is
    already in the circuit, its upstream node joining the circuit. Ties go to the lower
    edge number."""
    s = _as_scores(graph, scores)
    _check_n(graph, n)
    key = _ranked(s, absolute)
    if how == "top-n":
        order = np.argsort(-key, kind="stable")
        return np.sort(order[:n])
    if how != "greedy":
        raise ConfigError(f"unknown selection {how!r}; expected one of {', '.join(SELECTIONS)}.")
    reader = _reader_nodes(graph)
    into_node: dict[int, list[int]] = {}  # reader node -> the downstream inputs it reads
    for j, r in enumerate(reader):
        into_node.setdefault(int(r), []).append(j)
    # edges are destination-major
    starts = np.searchsorted(graph.dst, np.arange(len(graph.downstream) + 1))
    heap: list[tuple[float, int]] = []
    joined: set[int] = set()

    def join(node: int) -> None:
        joined.add(node)
        for j in into_node.get(node, []):
            for e in range(starts[j], starts[j + 1]):
                heapq.heappush(heap, (-float(key[e]), e))

    join(len(graph.upstream))  # the logits
    chosen: list[int] = []
    while len(chosen) < n and heap:
        _, e = heapq.heappop(heap)
        chosen.append(e)
        u = int(graph.src[e])
        if u not in joined:
            join(u)
    return np.sort(np.asarray(chosen, dtype=np.int64))


def prune(graph: Graph, edges: Sequence[int] | np.ndarray) -> np.ndarray:
    """The edges (sorted) of ``edges`` that lie on a path from ``input`` to ``logits``
    through ``edges``."""
    sel = np.zeros(graph.n_edges, dtype=bool)
    sel[np.asarray(edges, dtype=np.int64)] = True
    n_up = len(graph.upstream)
    reader = _reader_nodes(graph)
    starts = np.searchsorted(graph.dst, np.arange(len(graph.downstream) + 1))
    # forward: inputs in forward order, so a node's incoming edges are all seen before its outgoing ones
    reached = np.zeros(n_up + 1, dtype=bool)
    reached[0] = True  # input
    for j in range(len(graph.downstream)):
        e = slice(starts[j], starts[j + 1])
        if (sel[e] & reached[graph.src[e]]).any():
            reached[reader[j]] = True
    # backward: inputs in reverse order, so a node's outgoing edges are all seen before its incoming ones
    reaches = np.zeros(n_up + 1, dtype=bool)
    reaches[n_up] = True  # logits
    for j in reversed(range(len(graph.downstream))):
        if reaches[reader[j]]:
            into = np.arange(starts[j], starts[j + 1])
            reaches[graph.src[into[sel[into]]]] = True
    keep = sel & reached[graph.src] & reaches[reader[graph.dst]]
    return np.flatnonzero(keep)


def select_circuit(
    graph: Graph,
    scores: Any,
    n: int,
    *,
    how: Selection = "top-n",
    absolute: bool = True,
    pruned: bool = True,
) -> Circuit:
    """The circuit of the ``n`` best edges by ``scores`` (``how``: "top-n" or "greedy",
    see :func:`select_edges`), pruned to paths from input to logits unless ``pruned=False``."""
    chosen = select_edges(graph, scores, n, how=how, absolute=absolute)
    edges = prune(graph, chosen) if pruned else chosen
    return Circuit(graph, edges, _nodes(graph, edges), n_selected=len(chosen), how=how)


def _nodes(graph: Graph, edges: np.ndarray) -> tuple[str, ...]:
    if len(edges) == 0:
        return ()
    reader = _reader_nodes(graph)
    ids = set(graph.src[edges].tolist()) | set(reader[graph.dst[edges]].tolist())
    return tuple(
        graph.upstream[i].name if i < len(graph.upstream) else "logits" for i in sorted(ids)
    )
