"""Ridge (and ordinary least squares, alpha=0), exact: one streaming pass of float64
co-moments per site and split, merged with Chan et al.'s formula, solved as
scikit-learn's Ridge with an unpenalised intercept. Under torchrun / accelerate each
process summarises its share of the store and the shares merge in rank order on every
process: the same weights everywhere, equal to one process's up to float64 rounding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .config import ProbeConfig, ProbeResult
from .plan import Plan

__all__ = ["fit_ridge"]


@dataclass
class _Comoments:
    """One site's count, means and centred co-moments of (x, y), float64."""

    n: int
    mx: np.ndarray  # (F,)
    my: float
    cxx: np.ndarray  # (F, F)
    cxy: np.ndarray  # (F,)
    syy: float

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> _Comoments:  # x (n, F), y (n,)
        mx, my = x.mean(0), float(y.mean())
        xc, yc = x - mx, y - my
        # xc.T @ xc: BLAS syrk, half a matmul
        return cls(len(y), mx, my, xc.T @ xc, xc.T @ yc, float(yc @ yc))

    def merge(self, o: _Comoments | None) -> _Comoments:
        if o is None or o.n == 0:
            return self
        n = self.n + o.n
        dx, dy, f = o.mx - self.mx, o.my - self.my, self.n * o.n / n
        return _Comoments(
            n,
            self.mx + dx * (o.n / n),
            self.my + dy * (o.n / n),
            self.cxx + o.cxx + f * np.outer(dx, dx),
            self.cxy + o.cxy + f * dx * dy,
            self.syy + o.syy + f * dy * dy,
        )

    def r2(self, w: np.ndarray, b: float | np.ndarray) -> float:
        """R^2 of x @ w + b on the data summarised here (scikit-learn's r2_score)."""
        if self.n == 0 or self.syy <= 0:
            return float("nan")
        off = self.my - self.mx @ w - b  # mean residual
        sse = self.syy - 2 * w @ self.cxy + w @ self.cxx @ w + self.n * off**2
        return float(1 - sse / self.syy)


def _accumulate(plan: Plan, cfg: ProbeConfig) -> dict[tuple[str, bool], _Comoments]:
    """This process's share of the store, summarised per (site, split)."""
    acc: dict[tuple[str, bool], _Comoments] = {}
    for xs, y, test in plan.read_all(
        np.float64, cfg.num_workers, cfg.progress, f"ridge ({len(plan.sites)} sites)"
    ):
        for split in (False, True):
            sel = test == split
            if sel.any():
                for s, x in zip(plan.sites, xs):
                    c = _Comoments.of(x[sel], y[sel])
                    acc[s.hook, split] = (
                        acc[s.hook, split].merge(c) if (s.hook, split) in acc else c
                    )
    return acc


def fit_ridge(plan: Plan, cfg: ProbeConfig) -> tuple[dict, dict[str, ProbeResult], dict]:
    acc: dict[tuple[str, bool], _Comoments] = {}
    # every process's co-moments, merged in rank order on every process: the same weights everywhere
    for part in plan.procs.each(lambda: _accumulate(plan, cfg), "the ridge co-moments were summed"):
        for key, c in part.items():
            acc[key] = acc[key].merge(c) if key in acc else c
    fitted, results = {}, {}
    for s in plan.sites:
        train, test = acc.get((s.hook, False)), acc.get((s.hook, True))
        if train is None or train.n < 2:
            raise ConfigError(
                f"Target '{plan.target.name}' labels fewer than 2 training positions; nothing to fit."
            )
        A = train.cxx + cfg.alpha * np.eye(s.n_features)
        if cfg.alpha > 0:
            w = np.linalg.solve(A, train.cxy)
        else:  # least squares; the minimum-norm solution when X^T X is singular
            w = np.linalg.lstsq(A, train.cxy, rcond=None)[0]
        b = train.my - train.mx @ w
        fitted[s.hook] = (w[:, None], np.array([b]))
        results[s.hook] = ProbeResult(
            s.hook,
            s.layer,
            train.r2(w, b),
            test.r2(w, b) if test else float("nan"),
            train.n,
            test.n if test else 0,
            0.0,
            0,
            0,
            True,
        )
    return fitted, results, {}
