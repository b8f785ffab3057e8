"""How a sweep's patched variants are batched: the memory one batched forward may use
(:func:`default_memory_budget`), a variant row's rough peak bytes through a block
(:func:`variant_row_bytes`), and which variants, sorted by the first position they
change, share a forward call (:func:`plan_chunks`). Used by the patching engine
(:mod:`actstore.patching.engine`) and the circuits' batched forwards."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from ..model_protocol import HookedModel
from ..models import bridge_dtype

__all__ = ["default_memory_budget", "variant_row_bytes", "plan_chunks", "CALL_COST_ROWPOS"]

# one block call costs about as much as this many extra (row x position) items of work:
# reading the block's weights once (measured on CPU, one thread, GPT-2-small block: 3.5 ms
# for one position, 0.15 ms per further row-position); kernel launches dominate on GPU
CALL_COST_ROWPOS = {"cpu": 24, "cuda": 4096}


def default_memory_budget(device: torch.device | str) -> int:
    """Bytes of activations one batched forward may use: half the free GPU memory, or a
    quarter of the available RAM, at most 512 MiB (on CPU, batches beyond a few hundred
    rows only run slower per row)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        avail = 8 * 2**30
    return int(min(512 * 2**20, avail // 4))


def variant_row_bytes(model: HookedModel, n_pos: int, act_numel: int, full_logits: bool) -> int:
    """Rough peak bytes of one prompt row of one variant through a block."""
    cfg = model.cfg
    d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * cfg.d_model)
    item = torch.finfo(bridge_dtype(model)).bits // 8
    per_pos = 12 * int(cfg.d_model) + 3 * d_mlp + 4 * int(cfg.n_heads) * n_pos
    logits = n_pos * int(cfg.d_vocab) if full_logits else 0
    return item * (n_pos * per_pos + logits + 2 * act_numel)


def plan_chunks(
    starts: Sequence[int], rows_per_variant: int, max_variants: int, end: int, call_cost: int
) -> list[tuple[int, int]]:
    """Split variants sorted by start into consecutive chunks [i, j), minimising
    sum(rows * (end - start of the chunk's first variant)) + call_cost per forward call
    (a chunk larger than max_variants takes several calls). Groups of equal start stay
    together (nothing to gain by splitting them)."""
    groups: list[tuple[int, int]] = []  # (first variant, start)
    for i, s in enumerate(starts):
        if not groups or starts[groups[-1][0]] != s:
            groups.append((i, s))
    n, g = len(starts), len(groups)
    bounds = [gi for gi, _ in groups] + [n]
    best = [0.0] + [math.inf] * g
    cut = [0] * (g + 1)
    for j in range(1, g + 1):
        for i in range(j):
            n_var = bounds[j] - bounds[i]
            cost = (
                n_var * rows_per_variant * (end - groups[i][1])
                + math.ceil(n_var / max_variants) * call_cost
            )
            if best[i] + cost < best[j]:
                best[j], cut[j] = best[i] + cost, i
    chunks: list[tuple[int, int]] = []
    j = g
    while j > 0:
        i = cut[j]
        for a in range(bounds[i], bounds[j], max_variants):
            chunks.append((a, min(a + max_variants, bounds[j])))
        j = i
    return sorted(chunks)
