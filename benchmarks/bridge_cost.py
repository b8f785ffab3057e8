"""What the TransformerBridge costs over the plain Hugging Face model it wraps: the plain
model's truncated forward (the reference of bench_cache.py) and a per-component
breakdown (layer norms, attention, MLP, the rest) of one batch in each.

    python benchmarks/bench_cache.py --scenario layer6 --breakdown   (prints both)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actstore.models import DTYPES, LoadedModel
from actstore.sites import stop_layer

# the plain model's attention implementations (the bridge computes its own, eager-like)
ATTN = (
    "eager",
    "sdpa",
)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _Stop(Exception):
    """Raised by a forward hook on the last block needed: the plain model's early stop."""


def plain_hf(folder: Path, dtype: str, device: str, attn: str) -> torch.nn.Module:
    """The Hugging Face model of the folder, without TransformerLens."""
    from transformers import GPT2LMHeadModel

    return (
        GPT2LMHeadModel.from_pretrained(folder, dtype=DTYPES[dtype], attn_implementation=attn)
        .to(device)
        .eval()
    )


def hf_forward(hf: torch.nn.Module, tokens: torch.Tensor, stop: int | None) -> None:
    """Blocks 0..stop-1 of the plain model (the whole model, logits included, for None),
    as the bridge's truncated forward runs them."""
    handle = None if stop is None else hf.transformer.h[stop - 1].register_forward_hook(_raise_stop)
    try:
        with torch.inference_mode():
            (hf if stop is None else hf.transformer)(tokens)
    except _Stop:
        pass
    finally:
        if handle is not None:
            handle.remove()


def _raise_stop(*_: Any) -> None:
    raise _Stop


# the modules of one block, by role: the bridge's (TransformerBridge) and the plain model's names
PARTS = {
    "layer norms": (("ln1", "ln2"), ("ln_1", "ln_2")),
    "attention": (("attn",), ("attn",)),
    "mlp": (("mlp",), ("mlp",)),
}


def component_times(
    blocks: list[torch.nn.Module], names: int, run: Callable[[], None], device: str, repeat: int
) -> dict[str, float]:
    """Seconds per forward spent in each role's modules over the blocks that run (forward
    pre/post hooks with a clock; CUDA synchronised at each), and the whole forward
    ("total"); "the rest" is embeddings, block plumbing, hook points outside the parts.
    ``names``: 0 for the bridge's module names, 1 for the plain model's. Median of ``repeat``."""
    spent: dict[str, float] = {}
    started: list[float] = []

    def pre(*_: Any) -> None:
        sync(device)
        started.append(time.perf_counter())

    def post(role: str) -> Callable[..., None]:
        def fn(*_: Any) -> None:
            sync(device)
            spent[role] = spent.get(role, 0.0) + time.perf_counter() - started.pop()

        return fn

    handles = [
        h
        for block in blocks
        for role, attrs in PARTS.items()
        for attr in attrs[names]
        for h in (
            getattr(block, attr).register_forward_pre_hook(pre),
            getattr(block, attr).register_forward_hook(post(role)),
        )
    ]
    rounds: list[dict[str, float]] = []
    try:
        for _ in range(repeat):
            spent.clear()
            sync(device)
            t0 = time.perf_counter()
            run()
            sync(device)
            rounds.append({**spent, "total": time.perf_counter() - t0})
    finally:
        for h in handles:
            h.remove()
    med = {k: float(np.median([r.get(k, 0.0) for r in rounds])) for k in (*PARTS, "total")}
    med["the rest"] = med["total"] - sum(med[k] for k in PARTS)
    return med


def breakdown(
    model: LoadedModel,
    hf: torch.nn.Module,
    tokens: torch.Tensor,
    sites: list,
    device: str,
    repeat: int,
) -> dict[str, dict[str, float]]:
    """Where the bridge's extra time goes: per role, bridge vs plain model (eager), one batch;
    and the cost of a forward of 1 row x 4 tokens (compute ~nil: Python, hooks, wrappers)."""
    stop = stop_layer(sites)
    n = len(model.bridge.blocks) if stop is None else stop
    bridge = component_times(
        list(model.bridge.blocks[:n]),
        0,
        lambda: model.capture(tokens, sites, keep=False),
        device,
        repeat,
    )
    plain = component_times(
        list(hf.transformer.h[:n]),
        1,
        lambda: hf_forward(hf, tokens.to(device), stop),
        device,
        repeat,
    )
    tiny = tokens[:1, :4]
    bridge[TINY] = _median_time(
        lambda: model.capture(tiny, sites, keep=False), device, max(20, repeat)
    )
    plain[TINY] = _median_time(
        lambda: hf_forward(hf, tiny.to(device), stop), device, max(20, repeat)
    )
    return {"bridge": bridge, "hf_eager": plain}


TINY = "a forward of 1 row x 4 tokens"


def _median_time(fn: Callable[[], None], device: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def same_values(
    model: LoadedModel, hf: torch.nn.Module, tokens: torch.Tensor, n_blocks: int
) -> list[dict[str, Any]]:
    """Whether hooks on the plain model could replace the bridge's for caching: the block
    outputs (blocks.L.hook_resid_post) of both on one batch, per layer: bit-equal or not,
    and the largest difference relative to the spread (std) of the bridge's values."""
    from actstore.sites import Site

    sites = [Site(f"blocks.{i}.hook_resid_post", i) for i in range(n_blocks)]
    ours = model.capture(tokens, sites)
    theirs: dict[int, torch.Tensor] = {}
    handles = [
        block.register_forward_hook(
            lambda mod, args, out, i=i: theirs.__setitem__(
                i, (out[0] if isinstance(out, tuple) else out).detach().clone()
            )
        )
        for i, block in enumerate(hf.transformer.h)
    ]
    try:
        hf_forward(hf, tokens.to(next(hf.parameters()).device), n_blocks)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for i, site in enumerate(sites):
        a, b = ours[site.hook].float(), theirs[i].float()
        rows.append(
            {
                "hook": site.hook,
                "bit_equal": bool(torch.equal(ours[site.hook], theirs[i])),
                "max_abs_diff": float((a - b).abs().max()),
                "spread": float(a.std()),
            }
        )
    return rows
