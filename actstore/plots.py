"""Figures for results people look at: heatmaps and curves, written as PNG.
Matplotlib runs headless (Agg)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["heatmap", "curves"]


def pyplot():
    """matplotlib.pyplot on the headless Agg backend, imported when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(
    data: np.ndarray,
    path: str | os.PathLike[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    xticklabels: Sequence[str] | None = None,
    yticklabels: Sequence[str] | None = None,
    diverging: bool = False,
    colorbar_label: str = "",
) -> str:
    """A (rows, cols) heatmap. ``diverging`` centres a red-blue map on 0 (patching
    results); otherwise a sequential map (scores, accuracies)."""
    plt = pyplot()
    data = np.asarray(data, dtype=float)
    h, w = data.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * w + 2), max(3.0, 0.35 * h + 1.5)))
    if diverging:
        lim = float(np.nanmax(np.abs(data))) or 1.0
        im = ax.imshow(data, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    else:
        im = ax.imshow(data, cmap="viridis", aspect="auto")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(
        range(w),
        labels=list(xticklabels) if xticklabels is not None else range(w),
        rotation=90 if xticklabels is not None else 0,
        fontsize=8,
    )
    ax.set_yticks(
        range(h), labels=list(yticklabels) if yticklabels is not None else range(h), fontsize=8
    )
    fig.colorbar(im, ax=ax, label=colorbar_label)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps colorbar labels in the picture
    plt.close(fig)
    return os.fspath(path)


def curves(
    x: Sequence[float],
    ys: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> str:
    """One line per entry of ``ys`` against ``x`` (e.g. accuracy by layer)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, y in ys.items():
        ax.plot(list(x), list(y), marker="o", label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if all(float(v).is_integer() for v in x):  # layers, steps: no tick between two of them
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(ys) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps colorbar labels in the picture
    plt.close(fig)
    return os.fspath(path)
