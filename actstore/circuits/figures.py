"""`actstore circuit`'s figures, next to the results group ``OUT.zarr``:

- ``OUT.<method>.circuit.png``: the circuit, nodes by layer (input at the bottom, the
  logits at the top), edges coloured by the sign of their score, width by its size,
  dashed into a query, dotted into a key; drawn by matplotlib, no graphviz needed;
- ``OUT.<method>.circuit.dot`` (graphviz: ``dot -Tsvg``) and ``.json`` (nodes and edges
  with scores) of the same circuit, for other tools;
- ``OUT.faithfulness.png``: faithfulness by circuit size, each method's mean over pairs
  with the per-pair quartiles as a band;
- ``OUT.<method>-vs-exact.png``: each attribution method's edge scores against exact's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..plots import pyplot
from .circuit import Circuit
from .faithfulness import Faithfulness

__all__ = ["draw_circuit", "draw_curves", "draw_comparison", "circuit_json", "circuit_dot"]

_STYLE = {"q": "--", "k": ":", "v": "-", "mlp": "-", "logits": "-"}


def out_stem(out: str) -> str:
    """The path the figures of a job writing ``out`` start with (``out`` less ``.zarr``)."""
    return out[:-5] if out.endswith(".zarr") else out


def _edges(circuit: Circuit, scores: np.ndarray) -> list[dict[str, Any]]:
    g = circuit.graph
    return [
        {
            "edge": g.names[e],
            "src": g.upstream[g.src[e]].name,
            "dst": g.downstream[g.dst[e]].node,
            "input": g.downstream[g.dst[e]].kind,
            "score": float(scores[e]),
        }
        for e in circuit.edges
    ]


def circuit_json(circuit: Circuit, scores: np.ndarray, **meta: Any) -> dict[str, Any]:
    """The circuit as a JSON-able dict: meta, nodes, and edges (name, src, dst node, input kind, score)."""
    return {
        **meta,
        "selection": circuit.how,
        "n_selected": circuit.n_selected,
        "n_edges": circuit.n_edges,
        "nodes": list(circuit.nodes),
        "edges": _edges(circuit, scores),
    }


def circuit_dot(circuit: Circuit, scores: np.ndarray, title: str = "circuit") -> str:
    """The circuit in graphviz's DOT language (bottom to top, edges labelled by input and score)."""
    edges = _edges(circuit, scores)
    top = max((abs(e["score"]) for e in edges), default=1.0) or 1.0
    lines = [
        "digraph circuit {",
        f'  label="{title}"; rankdir=BT; node [shape=box, style=rounded];',
    ]
    lines += [f'  "{n}";' for n in circuit.nodes]
    for e in edges:
        colour = "#2166ac" if e["score"] >= 0 else "#b2182b"
        label = f"{e['input']} {e['score']:.3g}" if e["input"] in "qkv" else f"{e['score']:.3g}"
        lines.append(
            f'  "{e["src"]}" -> "{e["dst"]}" [label="{label}", color="{colour}", '
            f"penwidth={0.5 + 3 * abs(e['score']) / top:.2f}];"
        )
    return "\n".join(lines + ["}"]) + "\n"


def _position(name: str, n_heads: int, n_layers: int) -> tuple[float, float]:
    mid = (n_heads - 1) / 2
    if name == "input":
        return mid, -1.0
    if name == "logits":
        return mid, 2.0 * n_layers
    if name.startswith("m"):
        return n_heads + 0.5, 2.0 * int(name[1:]) + 1
    layer, head = name[1:].split(".h")
    return float(head), 2.0 * int(layer)


def draw_circuit(
    out: str, method: str, circuit: Circuit, scores: np.ndarray, model_name: str, n_pairs: int
) -> list[str]:
    """The PNG, DOT and JSON of ``circuit``; their paths."""
    from matplotlib.lines import Line2D

    root = f"{out_stem(out)}.{method}.circuit"
    g = circuit.graph
    title = (
        f"{method} circuit: {os.path.basename(model_name)}, {n_pairs} pairs, {circuit.n_edges} edges "
        f"({circuit.n_selected} selected, {circuit.how})"
    )
    with open(f"{root}.json", "w") as f:
        json.dump(
            circuit_json(circuit, scores, model=model_name, method=method, n_pairs=n_pairs),
            f,
            indent=1,
        )
    with open(f"{root}.dot", "w") as f:
        f.write(circuit_dot(circuit, scores, title))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * g.n_heads + 3), max(4.0, 0.9 * g.n_layers + 3)))
    pos = {n: _position(n, g.n_heads, g.n_layers) for n in circuit.nodes}
    edges = _edges(circuit, scores)
    top = max((abs(e["score"]) for e in edges), default=1.0) or 1.0
    for e in sorted(edges, key=lambda e: abs(e["score"])):  # the strongest on top
        (x0, y0), (x1, y1) = pos[e["src"]], pos[e["dst"]]
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops=dict(
                arrowstyle="-|>",
                lw=0.4 + 3 * abs(e["score"]) / top,
                ls=_STYLE[e["input"]],
                shrinkA=9,
                shrinkB=9,
                color="#2166ac" if e["score"] >= 0 else "#b2182b",
                alpha=0.35 + 0.65 * abs(e["score"]) / top,
                connectionstyle="arc3,rad=0.12",
            ),
        )
    for n, (x, y) in pos.items():
        ax.text(
            x,
            y,
            n,
            ha="center",
            va="center",
            fontsize=7,
            zorder=3,
            bbox=dict(boxstyle="round", fc="#fdf6e3" if n.startswith("m") else "white", ec="grey"),
        )
    ax.set_xlim(-1, g.n_heads + 1.5)
    ax.set_ylim(-1.8, 2 * g.n_layers + 0.8)
    ax.set_yticks(
        [2 * i for i in range(g.n_layers)], [f"layer {i}" for i in range(g.n_layers)], fontsize=7
    )
    ax.set_xticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(
        handles=[
            Line2D([], [], color="#2166ac", label="score > 0"),
            Line2D([], [], color="#b2182b", label="score < 0"),
            Line2D([], [], color="grey", ls="--", label="into a query"),
            Line2D([], [], color="grey", ls=":", label="into a key"),
        ],
        fontsize=7,
        loc="upper right",
    )
    fig.tight_layout()
    fig.savefig(f"{root}.png", dpi=120)
    plt.close(fig)
    return [f"{root}.png", f"{root}.dot", f"{root}.json"]


def draw_curves(
    out: str, curves: Mapping[str, Faithfulness], model_name: str, n_pairs: int, selection: str
) -> str:
    """Faithfulness against circuit size (edges after pruning), per method: the mean over
    pairs and the per-pair quartiles."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method, c in curves.items():
        x = np.asarray(c.n_edges, float)
        lo, hi = np.nanpercentile(c.per_pair, [25, 75], axis=1)
        (line,) = ax.plot(x, c.mean, marker="o", ms=3, label=f"{method} (mean)")
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    ax.axhline(1, color="grey", lw=0.8, ls="--")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)
    ax.set_xlabel("edges in the circuit (after pruning)")
    ax.set_ylabel("faithfulness (0 corrupted, 1 clean)")
    ax.set_title(
        f"{os.path.basename(model_name)}: {selection} circuits, {n_pairs} pairs (band: per-pair quartiles)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = f"{out_stem(out)}.faithfulness.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_comparison(
    out: str,
    method: str,
    exact: np.ndarray,
    approx: np.ndarray,
    corr: Mapping[str, Any],
    model_name: str,
) -> str:
    """``method``'s edge scores against exact's, one point per edge, with y = x."""
    from ..patching.attribution import plot_comparison

    fmt = lambda r: "n/a" if r is None else f"{r:.3f}"  # noqa: E731
    title = (
        f"{method} vs exact: {os.path.basename(model_name)}, {corr['n_edges']} edges\nPearson r "
        f"{fmt(corr['pearson'])}, Spearman {fmt(corr['spearman'])}, top-{corr['top']} overlap "
        f"{fmt(corr['top_overlap'])}"
    )
    return plot_comparison(
        exact,
        approx,
        f"{out_stem(out)}.{method}-vs-exact.png",
        title=title,
        xlabel="exact edge score",
        ylabel=f"{method} edge score",
    )
