"""What every selftest shares (``actstore selftest`` and ``actstore selftest --model``):
a :class:`Check` and the :class:`SelftestReport` it goes into, the tolerance of a
comparison with a reference (relative to the reference's spread), every site of a store
against ``run_with_cache``, and running a plan of checks into a report."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .store import ActivationStore

__all__ = ["Check", "SelftestReport", "compare_to_reference", "compare_store", "run_plan"]


REL = {torch.float32: 1e-4, torch.float64: 1e-6, torch.float16: 2e-2, torch.bfloat16: 5e-2}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str  # what was compared, or the error
    error: float | None = None  # max |ours - reference|
    tolerance: float | None = None
    seconds: float = 0.0


@dataclass
class SelftestReport:
    device: str
    versions: dict[str, str]
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "device": self.device,
            "versions": self.versions,
            "checks": [asdict(c) for c in self.checks],
        }

    def text(self) -> str:
        lines = [
            f"actstore selftest on {self.device}",
            "versions: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()),
        ]
        for c in self.checks:
            nums = (
                ""
                if c.error is None
                else f"  max error {c.error:.2g} (tolerance {c.tolerance:.2g})"
            )
            lines.append(f"  {'PASS' if c.passed else 'FAIL'}  {c.name}{nums}  [{c.seconds:.1f} s]")
            if not c.passed or c.error is None:
                lines.append(f"        {c.detail}")
        n_fail = sum(not c.passed for c in self.checks)
        lines.append(
            "all checks passed"
            if self.passed
            else f"{n_fail} of {len(self.checks)} checks FAILED: do not trust actstore's numbers with these "
            "versions; install the tested ones (constraints.txt in actstore's source; README, 'Versions')."
        )
        return "\n".join(lines)


def compare_to_reference(
    ours: torch.Tensor, ref: torch.Tensor, scale: float, dtype: torch.dtype, min_spread: float
) -> tuple[bool, float, float, str]:
    """(within tolerance, max error, tolerance, why): ``ours`` against ``ref``, the tolerance
    relative to the reference's spread; a spread under ``min_spread`` is too little to compare."""
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    if ours.shape != ref.shape:
        return (
            False,
            float("inf"),
            0.0,
            f"shape {tuple(ours.shape)} where the reference has {tuple(ref.shape)}",
        )
    spread = float(ref.max() - ref.min())
    tol = max(REL[dtype] * spread, 16 * torch.finfo(dtype).eps * scale)
    err = float((ours - ref).abs().max())
    if spread < min_spread:
        return (
            False,
            err,
            tol,
            f"the reference's values span only {spread:.3g}: too little to compare",
        )
    return err <= tol, err, tol, f"reference spread {spread:.3g}"


def compare_store(store: ActivationStore, ref: Any, exact: bool, rel: float | None = None) -> Check:
    """Every site of ``store`` against ``ref`` (``run_with_cache``'s cache of the store's
    tokens, cast to the storage dtype): equal where ``exact`` (float32 on CPU), else within
    :func:`compare_to_reference`'s tolerance, or ``rel`` of the spread where that is tighter
    (float32 only). A failed Check names the site; a passed one's detail is "bit-exact" or
    the largest error."""
    dtype = getattr(torch, store.meta.storage_dtype)
    worst, worst_tol = 0.0, 0.0
    for hook in store.sites:
        ours = torch.from_numpy(np.asarray(store.acts(hook))).double()
        want = ref[hook].to(dtype).double().cpu()
        if "attn_scores" in hook:  # masked: compare where a query may look
            seen = want > -1e30
            ours, want = ours[seen], want[seen]
        if exact and not torch.equal(ours, want):
            return Check(
                "",
                False,
                f"{hook}: stored values differ from run_with_cache (float32 on CPU is bit-exact)",
            )
        ok, err, tol, why = compare_to_reference(ours, want, float(want.abs().max()), dtype, 0.0)
        if rel is not None and dtype == torch.float32:
            tol = min(tol, rel * float(want.max() - want.min()))
            ok = err <= tol
        if not ok:
            return Check(
                "", False, f"{hook}: {why}; max error {err:.3g} > tolerance {tol:.3g}", err, tol
            )
        worst, worst_tol = max(worst, err), max(worst_tol, tol)
    what = "bit-exact" if exact else f"max error {worst:.2g}"
    return Check("", True, what, None if exact else worst, None if exact else worst_tol)


def run_plan(
    plan: Sequence[tuple[str, Callable[[], Check]]], report: SelftestReport, progress: bool
) -> None:
    """Run each (name, check) into ``report``; an exception is a failed check."""
    for name, run in plan:
        t = time.perf_counter()
        try:
            check = run()
        except Exception as e:  # a broken engine raises (EngineCheckError): that is a failed check
            check = Check("", False, f"{type(e).__name__}: {e}")
        check.name, check.seconds = name, time.perf_counter() - t
        report.checks.append(check)
        if progress:
            print(
                f"  {'PASS' if check.passed else 'FAIL'}  {name}  [{check.seconds:.1f} s]",
                flush=True,
            )
