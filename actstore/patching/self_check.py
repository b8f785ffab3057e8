"""The patching engine's self-check: every sweep recomputes one of its variants the
plain way and refuses to return a result that disagrees.

The engine (:mod:`actstore.patching.engine`) is fast because it relies on how
TransformerLens's bridge runs a block standalone and hands keys and values to its
attention; both are internals that a transformers or TransformerLens release can
change without an error (transformers 5.24 did). So after a sweep, the variant that
exercises the engine the most (:func:`pick`) is run again as ``transformer_lens.patching``
runs it: one full ``run_with_hooks`` of the corrupted prompts, the sweep's own setter
applied to the hooked activation, the metric on the logits. A difference beyond float
rounding raises :class:`EngineCheckError` naming the installed versions and the way
around it. The check costs one forward of the corrupted batch per sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .. import compat
from ..errors import EngineCheckError
from ..model_protocol import HookedModel
from .clean import CleanValues
from .hooked import run_cells

__all__ = ["ENABLED", "engine_error", "pick", "check_variants", "tolerance"]

ENABLED = True  # benchmarks switch it off to measure its cost; nothing else should

# relative to the spread of the sweep's values; floor in ulps of the logits (the dtype's eps
# x the largest logit the metrics read). Measured on CPU: engine and plain run differ by
# under 1 ulp of the logits (float32), not at all (float16, bfloat16, same kernels). In
# bfloat16 the floor is about 0.2 logits, so there the check catches gross errors only.
_RTOL = {torch.float16: 1e-2, torch.bfloat16: 3e-2}
_RTOL_DEFAULT = 1e-3
_FLOOR_ULPS = 8


def engine_error(detail: str, kv_prefix: bool) -> EngineCheckError:
    way = (
        "pass kv_prefix=False (every patched variant then runs from position 0, reusing no keys or values; "
        "slower), or "
        if kv_prefix
        else ""
    )
    return EngineCheckError(
        f"actstore's patching engine {detail}, with {compat.describe()}. No result was returned: this "
        "combination of releases changed an internal the engine relies on. Fix: install the tested releases "
        "(pip install -c constraints.txt -e . in actstore's source, or the versions listed in its README), "
        f"or {way}use transformer_lens.patching for this sweep; `actstore selftest` checks a setup."
    )


def tolerance(
    values: torch.Tensor, reference: torch.Tensor, scale: float, dtype: torch.dtype
) -> float:
    """Largest difference from ``reference`` that float rounding explains: a fraction of
    the spread of every value seen (the sweep's, its baseline's, the reference's),
    and at least a few ulps of ``scale``, the size of what they are computed from (the
    logits a metric reads)."""
    pool = torch.cat(
        [values.detach().flatten().double().cpu(), reference.detach().flatten().double().cpu()]
    )
    pool = pool[torch.isfinite(pool)]
    spread = float(pool.max() - pool.min()) if len(pool) else 0.0
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    return max(_RTOL.get(dtype, _RTOL_DEFAULT) * spread, _FLOOR_ULPS * eps * (1.0 + scale))


def pick(live: Sequence[tuple[int, int]], effect: dict[int, float], end: int) -> list[int]:
    """The cell to recompute, from the live (start, cell) pairs: of those whose window
    reuses earlier keys and values (start > 0) and spans more than one position (so
    that, when the metrics read the last position only, the last block runs it alone),
    the one whose patch moves the metrics most; a gross error in any of the engine's
    mechanisms, or a patch that reaches the wrong tensors, shows there."""
    if not live:
        return []
    both = [c for s, c in live if 0 < s < end - 1]
    wide = [c for s, c in live if s < end - 1]
    return [max(both or wide or [c for _, c in live], key=lambda c: effect.get(c, 0.0))]


def check_variants(
    model: HookedModel,
    tokens: torch.Tensor,
    cells: Sequence[int],
    index_of: Callable[[int], Sequence[int]],
    hook_of: Callable[[int], str],
    setter: Callable[..., torch.Tensor],
    clean: CleanValues,
    in_place: bool,
    evaluate: Callable[[torch.Tensor], torch.Tensor],
    got: torch.Tensor,
    seen: torch.Tensor,
    logit_scale: float,
    kv_prefix: bool,
) -> None:
    """Recompute ``cells`` with one plain ``run_with_hooks`` (rows variant-major) and
    raise EngineCheckError unless each equals ``got`` (cell, metric[, batch]) within
    :func:`tolerance` of ``seen`` (every value of the sweep).

    ``setter``, ``clean`` and ``in_place`` as :func:`~actstore.patching.hooked.run_cells`;
    ``evaluate`` maps full logits (variant * batch, pos, vocab) to (variant, metric[, batch])."""
    logits, fired = run_cells(model, tokens, cells, index_of, hook_of, setter, clean, in_place)
    want = evaluate(logits)
    by_hook = {hook_of(c) for c in cells}
    if sorted(fired) != sorted(by_hook):
        raise engine_error(
            f"self-check: hooks {sorted(set(by_hook) - set(fired))} did not fire in a plain "
            "run_with_hooks",
            kv_prefix,
        )
    got = got[list(cells)].to(want.device)
    tol = tolerance(seen, want, logit_scale, logits.dtype)
    bad = ~torch.isclose(got.double(), want.double(), rtol=0, atol=tol, equal_nan=True)
    if bool(bad.any()):
        i = int(torch.nonzero(bad.flatten())[0, 0]) // max(1, bad[0].numel())
        c = cells[i]
        raise engine_error(
            f"gave {_fmt(got[i])} where a plain run_with_hooks of the same patch gives {_fmt(want[i])} "
            f"(tolerance {tol:.2g}; {hook_of(c)}, index {list(index_of(c))})",
            kv_prefix,
        )


def _fmt(t: torch.Tensor) -> str:
    vals = t.flatten().tolist()
    return ", ".join(f"{v:.6g}" for v in vals[:4]) + (", ..." if len(vals) > 4 else "")
