"""actstore: a batched activation-caching engine for mechanistic interpretability.

    import actstore
    store = actstore.cache(out="acts.zarr", model="actstore-demo", dataset="actstore-demo",
                           sites="resid_post:all", n_rows=64)
    store.acts("blocks.0.hook_resid_post", rows=slice(0, 8))  # (row, pos, d_model)
    store = actstore.open("acts.zarr")                          # later, or elsewhere

The user-facing entry points, their configs and results are at the top: caching
(``cache``, ``CacheConfig``), reading (``open``, ``ActivationStore``), models
(``load_model``, ``save_model``: a model object works wherever a name does), patching
prompt pairs (``patch_pairs``, ``PatchJobConfig``, ``PatchJobResult``), circuits
(``find_circuit``, ``CircuitJobConfig``, ``CircuitJobResult``) and probes (``fit_probes``,
``ProbeConfig``, ``ProbeReport``, ``Probe``). The jobs' packages are here too:
``actstore.patching`` (with ``.attribution``, attribution patching, and ``.tasks``),
``actstore.circuits``, ``actstore.probes`` and ``actstore.analysis``; the errors are in
``actstore.errors`` (their root, ``ActStoreError``, is at the top).
"""

from . import analysis, circuits, errors, patching, probes
from .capture import CacheConfig, cache
from .circuits import CircuitJobConfig, CircuitJobResult, find_circuit
from .deprecation import moved_names
from .errors import ActStoreError
from .errors import __all__ as _errors_all
from .models import load_model, save_model
from .patching.job import PatchJobConfig, PatchJobResult, patch_pairs
from .probes import Probe, ProbeConfig, ProbeReport, fit_probes
from .store import ActivationStore
from .store import open_store as open  # noqa: A004  (actstore.open(path), as zarr.open)

__version__ = "0.1.0"
__all__ = [
    "cache",
    "CacheConfig",
    "open",
    "ActivationStore",
    "load_model",
    "save_model",
    "patch_pairs",
    "PatchJobConfig",
    "PatchJobResult",
    "find_circuit",
    "CircuitJobConfig",
    "CircuitJobResult",
    "fit_probes",
    "ProbeConfig",
    "ProbeReport",
    "Probe",
    "patching",
    "circuits",
    "probes",
    "analysis",
    "errors",
    "ActStoreError",
    "__version__",
]

# names that left the top (docs/changelog.md), each a deprecated alias of its home for one release
__getattr__ = moved_names(
    __name__,
    {
        "attribution": "actstore.patching.attribution",  # attribution patching (circuits' EAP is actstore.circuits)
        "tasks": "actstore.patching.tasks",
        "make_pairs": "actstore.patching.tasks.make_pairs",
        "PromptPair": "actstore.patching.tasks.PromptPair",
        "CorpusSpec": "actstore.corpus.CorpusSpec",
        "Site": "actstore.sites.Site",
        "parse_sites": "actstore.sites.parse_sites",
        "ModelInfo": "actstore.models.ModelInfo",
        "StoreMeta": "actstore.store.StoreMeta",
        "Moments": "actstore.stats.Moments",
        **{name: f"actstore.errors.{name}" for name in _errors_all if name != "ActStoreError"},
    },
)
