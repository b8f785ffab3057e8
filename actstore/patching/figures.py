"""`actstore patch`'s figures: the heatmap of each method's normalised (or raw) logit
difference, labelled with the first pair's tokens, and attribution against exact."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import attribution

if TYPE_CHECKING:
    from .config import PatchJobConfig
    from .pairs import Pairs

__all__ = ["heatmaps", "scatter"]


def _figure_base(cfg: PatchJobConfig, out: str) -> str:
    return cfg.figure or f"{out[:-5] if out.endswith('.zarr') else out}.{cfg.sweep}.png"


def scatter(
    cfg: PatchJobConfig,
    out: str,
    normalised: dict[str, np.ndarray],
    corr: dict[str, Any],
    model_name: str,
    n_pairs: int,
) -> str:
    root, ext = os.path.splitext(_figure_base(cfg, out))
    r = corr["pearson"]
    rc = corr.get("pearson_changed")
    title = (
        f"{cfg.sweep}: {os.path.basename(model_name)}, mean of {n_pairs} pair{'s' if n_pairs != 1 else ''}\n"
        f"Pearson r = {'n/a' if r is None else f'{r:.3f}'} ({corr['n_cells']} cells), "
        f"{'n/a' if rc is None else f'{rc:.3f}'} ({corr.get('n_changed', 0)} changed)"
    )
    return attribution.plot_comparison(
        normalised["exact"],
        normalised["attribution"],
        f"{root}.attribution-vs-exact{ext}",
        title=title,
        xlabel="exact patching (normalised LD)",
        ylabel="attribution patching (normalised LD)",
    )


def heatmaps(
    cfg: PatchJobConfig,
    out: str,
    data: np.ndarray,
    dims: Sequence[str],
    pairs: Pairs,
    tokenizer: Any,
    model_name: str,
    n_pairs: int,
    type_names: Sequence[str] | None,
    suffix: str = "",
) -> list[str]:
    """Heatmaps with positions along x, labelled 'clean token' (or 'clean/corrupted'
    where the first pair differs), and every other axis flattened along y."""
    from ..plots import heatmap

    if "src_pos" in dims:
        return []  # (layer, head, dest, src): no single readable picture; the arrays are in the group
    root, ext = os.path.splitext(_figure_base(cfg, out))
    base = f"{root}{suffix}{ext}"
    clean = [tokenizer.decode([int(t)]) for t in pairs.clean[0]]
    corr = [tokenizer.decode([int(t)]) for t in pairs.corrupted[0]]
    labels = [
        f"{i} {c!r}" if c == d else f"{i} {c!r}/{d!r}" for i, (c, d) in enumerate(zip(clean, corr))
    ]
    what = "normalised LD (0 corr., 1 clean)" if cfg.metric == "normalised" else "logit diff"
    panels = [(data, dims, base, cfg.sweep + (" (attribution)" if suffix else ""))]
    if type_names is not None:  # one figure per patch type
        root, ext = os.path.splitext(base)
        panels = [
            (
                data[i],
                dims[1:],
                f"{root}.{name}{ext}",
                f"{cfg.sweep} [{name}]" + (" (attribution)" if suffix else ""),
            )
            for i, name in enumerate(type_names)
        ]
    paths = []
    for values, names, path, title in panels:
        pos_axis = next((i for i, d in enumerate(names) if d in ("pos", "dest_pos")), None)
        col_axis = pos_axis if pos_axis is not None else len(names) - 1
        grid = np.moveaxis(values, col_axis, -1)
        rows = [n for i, n in enumerate(names) if i != col_axis]
        ylabels = [
            ".".join(f"{n[0].upper()}{i}" for n, i in zip(rows, idx))
            for idx in np.ndindex(*grid.shape[:-1])
        ]
        xlabels = labels if pos_axis is not None else [f"H{i}" for i in range(grid.shape[-1])]
        heatmap(
            grid.reshape(-1, grid.shape[-1]),
            path,
            title=f"{title}: {os.path.basename(model_name)}, mean of "
            f"{n_pairs} pair{'s' if n_pairs != 1 else ''}",
            xlabel=names[col_axis] + (" (pair 1's tokens)" if pos_axis is not None else ""),
            ylabel=" . ".join(rows),
            xticklabels=xlabels,
            yticklabels=ylabels,
            diverging=True,
            colorbar_label=what,
        )
        paths.append(path)
    return paths
