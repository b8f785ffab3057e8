"""The computational graph that circuit discovery scores, in the convention of EAP-IG
(hannamw/EAP-IG) and the MIB circuit benchmark, so results compare across tools.

Nodes that write to the residual stream (*upstream* nodes, in forward order):
``input`` (token plus position embeddings), ``a{L}.h{H}`` (head H of layer L: its z
times W_O, without the bias) and ``m{L}`` (the MLP of layer L's output).

Inputs that read from it (*downstream* inputs): each head's query, key and value input
separately, ``a{L}.h{H}<q>``, ``<k>``, ``<v>``; each MLP's input ``m{L}``; and
``logits`` (the final residual, before ``ln_final``).

An edge ``u->d`` exists where u is computed before d reads: a head of layer L reads
``input``, every head and MLP of layers before L; the MLP of layer L also reads the
heads of its own layer, except in a model whose blocks run attention and MLP in parallel
from the block's input (GPT-NeoX / Pythia: ``parallel``); ``logits`` read every node. A downstream input is the sum of
its upstream nodes' outputs plus the biases (attention output biases, which no node
owns). GPT-2 small (12 layers, 12 heads) has 32,491 edges.

Edges are numbered destination-major: the downstream inputs in forward order (per layer
its heads' q, k, v, head by head, then its MLP; finally the logits), and for each the
upstream nodes in forward order. ``src`` and ``dst`` index ``upstream`` and
``downstream``; ``names`` are ``"{upstream}->{downstream}"``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import ConfigError
from ..model_protocol import HookedModel

__all__ = ["Graph", "Node", "Input", "QKV"]

QKV = ("q", "k", "v")
NodeKind = Literal["input", "head", "mlp", "logits"]
InputKind = Literal["q", "k", "v", "mlp", "logits"]


@dataclass(frozen=True)
class Node:
    """An upstream node: kind "input" (layer -1), "head" or "mlp"; head is None but for heads."""

    name: str
    kind: NodeKind
    layer: int
    head: int | None = None


@dataclass(frozen=True)
class Input:
    """A downstream input: kind "q", "k", "v" (of a head), "mlp" or "logits" (layer n_layers)."""

    name: str
    kind: InputKind
    layer: int
    head: int | None = None

    @property
    def node(self) -> str:
        """The node that reads this input: ``a{L}.h{H}`` for a head's q/k/v, else the name."""
        return self.name.split("<")[0]


def _reads(u: Node, d: Input, parallel: bool) -> bool:
    if u.kind == "input" or d.kind == "logits":
        return True
    if d.kind == "mlp":
        return u.layer < d.layer or (u.layer == d.layer and u.kind == "head" and not parallel)
    return u.layer < d.layer  # a head's q/k/v


@dataclass(frozen=True)
class Graph:
    """Every node and edge of a model of ``n_layers`` x ``n_heads`` (``parallel``: its
    blocks run attention and MLP side by side)."""

    n_layers: int
    n_heads: int
    parallel: bool = False
    upstream: tuple[Node, ...] = field(init=False, repr=False)
    downstream: tuple[Input, ...] = field(init=False, repr=False)
    src: np.ndarray = field(init=False, repr=False)  # (edge,) int64 index into upstream
    dst: np.ndarray = field(init=False, repr=False)  # (edge,) int64 index into downstream
    names: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1:
            raise ConfigError(
                f"a graph needs at least one layer and one head, got {self.n_layers} x {self.n_heads}."
            )
        L, H = self.n_layers, self.n_heads
        up = [Node("input", "input", -1)]
        down: list[Input] = []
        for layer in range(L):
            up += [Node(f"a{layer}.h{h}", "head", layer, h) for h in range(H)] + [
                Node(f"m{layer}", "mlp", layer)
            ]
            down += [Input(f"a{layer}.h{h}<{c}>", c, layer, h) for h in range(H) for c in QKV]  # type: ignore[arg-type]
            down.append(Input(f"m{layer}", "mlp", layer))
        down.append(Input("logits", "logits", L))
        src, dst = [], []
        for j, d in enumerate(down):
            for i, u in enumerate(up):
                if _reads(u, d, self.parallel):
                    src.append(i)
                    dst.append(j)
        object.__setattr__(self, "upstream", tuple(up))
        object.__setattr__(self, "downstream", tuple(down))
        object.__setattr__(self, "src", np.asarray(src, dtype=np.int64))
        object.__setattr__(self, "dst", np.asarray(dst, dtype=np.int64))
        object.__setattr__(
            self, "names", tuple(f"{up[s].name}->{down[d].name}" for s, d in zip(src, dst))
        )

    @classmethod
    def from_model(cls, model: HookedModel) -> Graph:
        """The graph of a loaded model (``model.cfg.n_layers``, ``n_heads``, and whether its
        family's blocks are parallel); a model whose edges the graph cannot describe exactly
        is refused here (its family adapter says why)."""
        from ..families import adapter_for

        adapter = adapter_for(model, "Circuit discovery")
        adapter.check_edge_graph(model)
        return cls(int(model.cfg.n_layers), int(model.cfg.n_heads), adapter.parallel_blocks(model))

    @classmethod
    def for_model(cls, model: HookedModel, graph: Graph | None = None) -> Graph:
        """``graph``, checked to have the model's layers, heads and kind of block (ConfigError
        naming both otherwise), or the model's own graph (:meth:`from_model`) when None."""
        own = cls.from_model(model)
        if graph is None:
            return own
        if (graph.n_layers, graph.n_heads, graph.parallel) != (
            own.n_layers,
            own.n_heads,
            own.parallel,
        ):
            raise ConfigError(
                f"the graph has {graph.n_layers} layers of {graph.n_heads} heads"
                f"{' (parallel blocks)' if graph.parallel else ''} but the model {own.n_layers} of "
                f"{own.n_heads}{' (parallel blocks)' if own.parallel else ''}; pass Graph.from_model(model) "
                "(or graph=None)."
            )
        return graph

    @property
    def n_edges(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return self.n_edges

    def edge_index(self, names: str | Iterable[str]) -> np.ndarray:
        """Edge numbers of the given names (``"a0.h1->a2.h3<q>"``); ConfigError naming an unknown one."""
        lookup = self._lookup()
        single = isinstance(names, str)
        out = []
        for n in [names] if single else names:
            if n not in lookup:
                raise ConfigError(
                    f"no edge {n!r} in a {self.n_layers}-layer, {self.n_heads}-head graph; edges are "
                    "named like 'input->a0.h0<q>', 'a0.h1->a2.h3<k>', 'a1.h0->m1', 'm3->logits'."
                )
            out.append(lookup[n])
        return np.asarray(out, dtype=np.int64)

    def _lookup(self) -> dict[str, int]:
        cache = self.__dict__.get("_lookup_cache")
        if cache is None:
            cache = {n: i for i, n in enumerate(self.names)}
            object.__setattr__(self, "_lookup_cache", cache)
        return cache

    def edges_into(self, downstream: int) -> np.ndarray:
        """Edge numbers into one downstream input (contiguous: edges are destination-major)."""
        return np.flatnonzero(self.dst == downstream)

    def upstream_index(self, name: str) -> int:
        for i, u in enumerate(self.upstream):
            if u.name == name:
                return i
        raise ConfigError(f"no node {name!r}; nodes are 'input', 'a{{L}}.h{{H}}', 'm{{L}}'.")

    def downstream_index(self, name: str) -> int:
        for j, d in enumerate(self.downstream):
            if d.name == name:
                return j
        raise ConfigError(
            f"no input {name!r}; inputs are 'a{{L}}.h{{H}}<q|k|v>', 'm{{L}}', 'logits'."
        )
