"""Linear probes over a store, one per site, every site fitted from the same reads of the
store: ridge (exact, float64 co-moments: ridge.py) and multinomial logistic regression
(batched L-BFGS: logistic.py); targets and splits (labels.py); saved probes (probe.py).
See :func:`fit_probes`."""

from .config import KINDS, ProbeConfig, ProbeReport, ProbeResult
from .fit import fit_probes
from .probe import Probe, load_probe, probe_names

__all__ = [
    "ProbeConfig",
    "ProbeResult",
    "ProbeReport",
    "Probe",
    "fit_probes",
    "load_probe",
    "probe_names",
    "KINDS",
]
