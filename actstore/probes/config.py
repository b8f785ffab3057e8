"""What a probe run is asked (ProbeConfig) and what it gives (ProbeResult, ProbeReport)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError
from ..run_options import RunOptions

__all__ = ["ProbeConfig", "ProbeResult", "ProbeReport", "KINDS"]

KINDS = ("logistic", "ridge")


@dataclass
class ProbeConfig(RunOptions):
    """Options of one probe run; ``actstore probe``'s flags are generated from these fields
    and their metadata (see actstore.cli.flags), and from the run options (device,
    progress: actstore.run_options)."""

    sites: str | Sequence[str] = field(
        default="resid_post:all",
        metadata={  # resolved against the store's hooks
            "help": "specs or hook names present in the store (default resid_post:all)"
        },
    )
    target: Any = field(
        default="position",
        metadata={  # or, in Python, a (row, pos) array; see labels.py
            "help": "position | doc_pos | token | next_token | doc | FILE.npy",
            "required": True,
        },
    )
    kind: str | None = field(
        default=None,
        metadata={"help": "default: logistic for classes, ridge for real values", "choices": KINDS},
    )
    test_frac: float = field(
        default=0.2, metadata={"help": "fraction of rows held out (default 0.2)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the row split"})
    standardize: bool = field(
        default=True,
        metadata={  # (x - mean) / std from the store's stats
            "help": "fit on raw activations, not (x - mean) / std",
            "flag": "--no-standardize",
        },
    )
    class_weight: str | None = field(
        default=None,
        metadata={"help": "weight classes by n / (n_classes * count)", "choices": ("balanced",)},
    )
    max_classes: int | None = field(
        default=None,
        metadata={"help": "keep the K most frequent training classes (others unlabelled)"},
    )
    C: float = field(
        default=1.0, metadata={"help": "logistic: inverse L2 strength, as scikit-learn (default 1)"}
    )
    alpha: float = field(
        default=1.0, metadata={"help": "ridge: L2 strength, as scikit-learn; 0 = least squares"}
    )
    max_iter: int = field(
        default=100, metadata={"help": "L-BFGS iterations (default 100, scikit-learn's)"}
    )
    tol: float = field(
        default=1e-4,
        metadata={"help": "stop when max |gradient| <= tol (default 1e-4, scikit-learn's)"},
    )
    skip_bos: bool = field(
        default=True, metadata={"help": "also use position 0 (BOS)", "flag": "--keep-bos"}
    )
    max_memory_gb: float = field(
        default=8.0, metadata={"help": "gather data in memory up to this, else stream"}
    )
    num_workers: int = field(default=4, metadata={"help": "reader threads"})
    name: str | None = field(
        default=None, metadata={"help": "results/probes/NAME (default TARGET-KIND)"}
    )
    save: bool = field(
        default=True, metadata={"help": "do not write weights to the store", "flag": "--no-save"}
    )

    def validate(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(f"Unknown probe kind '{self.kind}'; expected 'logistic' or 'ridge'.")
        if self.class_weight not in (None, "balanced"):
            raise ConfigError(
                f"class_weight must be None or 'balanced'; got {self.class_weight!r}."
            )
        if not 0 < self.C < math.inf or not 0 <= self.alpha < math.inf:
            raise ConfigError(
                f"C must be > 0 and alpha >= 0, both finite; got C={self.C}, alpha={self.alpha}."
            )
        # 0: always stream
        if not 0 <= self.tol < math.inf or not 0 <= self.max_memory_gb < math.inf:
            raise ConfigError(
                f"tol and max_memory_gb must be >= 0 and finite; got tol={self.tol}, "
                f"max_memory_gb={self.max_memory_gb}."
            )
        for k in ("max_iter", "num_workers") + (
            ("max_classes",) if self.max_classes is not None else ()
        ):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise ConfigError(f"{k} must be a positive integer; got {getattr(self, k)!r}.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0; got {self.seed!r}.")
        if self.name is not None and (
            not self.name
            or self.name in (".", "..")
            or self.name.startswith("__")
            or any(c in self.name for c in "/\\")
        ):
            raise ConfigError(
                f"Probe name '{self.name}' must be non-empty, hold no '/' or '\\', and be neither "
                "'.', '..' nor start with '__' (it names a folder of the store's results)."
            )


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

        return {
            h: {k: clean(v) for k, v in asdict(r).items() if k != "hook"}
            for h, r in self.results.items()
        }

    def table(self) -> str:
        m = "acc" if self.metric == "accuracy" else "R^2"
        lines = [
            f"{self.kind} probes of '{self.target}' -> results/probes/{self.name}/",
            f"{'site':<34}{'train ' + m:>11}{'test ' + m:>11}{'baseline':>10}{'n_train':>10}{'n_test':>9}{'iters':>7}",
        ]
        for h, r in self.results.items():
            flag = "" if r.converged else "  (not converged)"
            lines.append(
                f"{h:<34}{r.train:>11.4f}{r.test:>11.4f}{r.baseline:>10.4f}{r.n_train:>10}{r.n_test:>9}"
                f"{r.n_iter:>7}{flag}"
            )
        return "\n".join(lines)
