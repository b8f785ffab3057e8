"""Linear probes over a store: one probe per site, every site fitted from the same
reads of the store, which need not fit in memory.

ridge (and ordinary least squares, alpha=0) is exact: one streaming pass accumulates,
per site and per split, float64 means and centred X^T X, X^T y, y^T y of each block,
merged with Chan et al.'s formula; the weights solve (X_c^T X_c + alpha I) w = X_c^T y_c
(scikit-learn's Ridge with an unpenalised intercept), and R^2 on both splits comes from
the same sums.

logistic is multinomial logistic regression with scikit-learn's objective, mean
(class-weighted) cross-entropy + ||W||^2 / (2 C n), minimised by L-BFGS batched over
sites: the parameters of every site sit in one (site, ...) tensor and each function
evaluation is one batched matmul (on GPU when there is one). One pass over the store
gathers the kept positions of every site into memory when they fit in max_memory_gb;
otherwise every evaluation streams the store again (memory stays bounded).

Splits are by row (see labels.split_rows). Features are standardised with the store's
stats unless standardize=False: mean and population variance over every masked position
of the store, BOS and test rows included (an affine map fixed before fitting, so it leaks
no labels); saved weights are folded back into raw activation space. Ridge runs on the
CPU (float64 BLAS) whatever the device.

Under torchrun / accelerate (detected as caching does, parallel.group_for) every process
streams a disjoint share of the store's read units: ridge merges the processes' co-moments
(the same weights on every process, equal to one process's up to float64 rounding);
logistic all-reduces each loss and gradient evaluation, so the processes take the same
L-BFGS steps. Process 0 alone writes the probes; every process returns the same report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..parallel import group_for
from ..store.loader import resolve_sites, token_sites
from .config import ProbeConfig, ProbeReport
from .labels import check_regression, parse_target, split_rows
from .logistic import fit_logistic
from .plan import Plan
from .probe import probe_writers, save_probes
from .ridge import fit_ridge

if TYPE_CHECKING:
    from ..store import ActivationStore

__all__ = ["fit_probes"]


def fit_probes(
    store: ActivationStore, config: ProbeConfig | None = None, /, **options: Any
) -> ProbeReport:
    """Fit one linear probe per site of ``store``; save them under results/probes/<name>/
    and return their train and test scores. Takes a ProbeConfig or its fields."""
    cfg = config if config is not None else ProbeConfig(**options)
    cfg.validate()
    sites = token_sites(store, resolve_sites(store, cfg.sites))
    target = parse_target(cfg.target, store)
    kind = cfg.kind or ("logistic" if target.categorical else "ridge")
    if kind == "logistic" and not target.categorical:
        raise ConfigError(f"Target '{target.name}' holds real values; fit it with kind 'ridge'.")
    if kind == "ridge" and not target.numeric:
        raise ConfigError(
            f"Target '{target.name}' holds category ids, not quantities; fit it with kind 'logistic'."
        )
    store.check_done(slice(None))
    test_rows = split_rows(store.n_rows, cfg.test_frac, cfg.seed)
    name = cfg.name or f"{target.name}-{kind}"
    # under torchrun / accelerate: each process reads its share of the store
    procs = group_for(cfg.device)
    writers: dict = {}  # process 0 writes; a read-only store is refused now, on every process
    if cfg.save:
        procs.on_main(
            lambda: writers.update(probe_writers(store, name, [s.hook for s in sites])),
            "checking the store can be written",
        )
    if kind == "ridge":
        check_regression(store, target, test_rows, cfg.skip_bos)
    mean, scale = {}, {}
    for s in sites:
        if cfg.standardize:
            m = store.stats(s.hook)
            mean[s.hook] = m.mean.ravel()
            sd = np.sqrt(m.var.ravel())
            scale[s.hook] = np.where(sd > 1e-12, sd, 1.0)
        else:
            mean[s.hook], scale[s.hook] = np.zeros(s.n_features), np.ones(s.n_features)
    plan = Plan(store, sites, target, test_rows, mean, scale, cfg.skip_bos, procs=procs)
    device = procs.device or _device(cfg.device)
    if kind == "ridge":
        fitted, results, notes = fit_ridge(plan, cfg)
    else:
        fitted, results, notes = fit_logistic(plan, cfg, device)
    report = ProbeReport(
        kind, target.name, name, "accuracy" if kind == "logistic" else "r2", results, notes
    )
    if cfg.save:  # the others wait, and see its error if it fails
        procs.on_main(
            lambda: save_probes(store, plan, cfg, report, fitted, writers), "saving the probes"
        )
    return report


def _device(device: str) -> str:
    from ..models import resolve_device

    return resolve_device(device)
