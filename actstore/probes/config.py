"""What a probe run is asked (ProbeConfig) and what it gives (ProbeResult, ProbeReport)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence


from ..errors import ConfigError

__all__ = ["ProbeConfig", "ProbeResult", "ProbeReport", "KINDS"]

KINDS = ("logistic", "ridge")


@dataclass
class ProbeConfig:
    """Options of one probe run; the CLI flags map onto these fields."""

    sites: str | Sequence[str] = "resid_post:all"  # specs resolved against the store's hooks
    target: Any = "position"  # built-in name, .npy path, or (row, pos) array; see labels.py
    kind: str | None = None  # 'logistic' | 'ridge'; None: logistic for classes, ridge for real values
    test_frac: float = 0.2  # fraction of rows held out
    seed: int = 0  # the split's seed
    standardize: bool = True  # (x - mean) / std from the store's stats before fitting
    class_weight: str | None = None  # None | 'balanced' (scikit-learn's n / (n_classes * count))
    max_classes: int | None = None  # keep the most frequent training classes; others are not labels
    C: float = 1.0  # logistic: inverse L2 strength, as scikit-learn's C
    alpha: float = 1.0  # ridge: L2 strength, as scikit-learn's alpha; 0 = least squares
    max_iter: int = 100  # L-BFGS iterations (scikit-learn's default)
    tol: float = 1e-4  # stop when max |gradient| <= tol (scikit-learn's default)
    skip_bos: bool = True  # pos 0 of every row is BOS
    device: str = "auto"
    max_memory_gb: float = 8.0  # gather data in memory up to this; stream the store beyond it
    num_workers: int = 4  # reader threads
    name: str | None = None  # results/probes/<name>/...; default: '<target>-<kind>'
    save: bool = True
    progress: bool = True
    command_line: str | None = None  # provenance; the CLI fills it in

    def validate(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(f"Unknown probe kind '{self.kind}'; expected 'logistic' or 'ridge'.")
        if self.class_weight not in (None, "balanced"):
            raise ConfigError(f"class_weight must be None or 'balanced'; got {self.class_weight!r}.")
        if not self.C > 0 or not self.alpha >= 0:
            raise ConfigError(f"C must be > 0 and alpha >= 0; got C={self.C}, alpha={self.alpha}.")
        for k in ("max_iter", "num_workers") + (("max_classes",) if self.max_classes is not None else ()):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise ConfigError(f"{k} must be a positive integer; got {getattr(self, k)!r}.")
        if self.name is not None and ("/" in self.name or not self.name):
            raise ConfigError(f"Probe name '{self.name}' must be non-empty and hold no '/'.")


@dataclass(frozen=True)
class ProbeResult:
    """Scores of one site's probe: accuracy (logistic) or R^2 (ridge)."""

    hook: str
    layer: int | None
    train: float
    test: float  # NaN without test rows
    n_train: int  # labelled positions used
    n_test: int
    baseline: float  # logistic: test accuracy of the most frequent training class; ridge: 0
    n_classes: int  # 0 for ridge
    n_iter: int  # L-BFGS iterations (0 for ridge)
    converged: bool


@dataclass
class ProbeReport:
    kind: str
    target: str
    name: str
    metric: str  # 'accuracy' | 'r2'
    results: dict[str, ProbeResult]
    notes: dict[str, Any] = field(default_factory=dict)  # ignored positions and the like

    def to_json(self) -> dict[str, dict[str, Any]]:
        """{hook: scores}, NaN as None."""
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and math.isnan(v) else v
        return {h: {k: clean(v) for k, v in asdict(r).items() if k != "hook"} for h, r in self.results.items()}

    def table(self) -> str:
        m = "acc" if self.metric == "accuracy" else "R^2"
        lines = [f"{self.kind} probes of '{self.target}' -> results/probes/{self.name}/",
                 f"{'site':<34}{'train ' + m:>11}{'test ' + m:>11}{'baseline':>10}{'n_train':>10}{'n_test':>9}{'iters':>7}"]
        for h, r in self.results.items():
            flag = "" if r.converged else "  (not converged)"
            lines.append(f"{h:<34}{r.train:>11.4f}{r.test:>11.4f}{r.baseline:>10.4f}{r.n_train:>10}{r.n_test:>9}"
                         f"{r.n_iter:>7}{flag}")
        return "\n".join(lines)


