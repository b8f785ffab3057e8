"""actstore: a batched activation-caching engine for mechanistic interpretability.

    import actstore
    store = actstore.cache(out="acts.zarr", model="actstore-demo", dataset="actstore-demo",
                           sites="resid_post:all", n_rows=64)
    store.acts("blocks.0.hook_resid_post", rows=slice(0, 8))  # (row, pos, d_model)
    store = actstore.open("acts.zarr")                          # later, or elsewhere

The user-facing entry points, their configs and results are at the top: caching
(``cache``, ``CacheConfig``), reading (``open``, ``ActivationStore``, ``StoreMeta``),
patching prompt pairs (``patch_pairs``, ``PatchJobConfig``, ``PatchJobResult``), probes
(``fit_probes``, ``ProbeConfig``, ``ProbeReport``, ``Probe``) and models (``load_model``,
``save_model``: a model object works wherever a name does). The jobs' modules are here
too: ``actstore.patching`` (and ``.attribution``, ``.tasks``), ``actstore.probes`` and
``actstore.analysis``.
"""

from . import analysis, circuits, patching, probes
from .capture import CacheConfig, cache
from .circuits import CircuitJobConfig, CircuitJobResult, find_circuit
from .corpus import CorpusSpec
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from .models import ModelInfo, load_model, save_model
from .patching import attribution, tasks
from .patching.job import PatchJobConfig, PatchJobResult, patch_pairs
from .patching.tasks import PromptPair, make_pairs
from .probes import Probe, ProbeConfig, ProbeReport, fit_probes
from .sites import Site, parse_sites
from .stats import Moments
from .store import ActivationStore, StoreMeta
from .store import open_store as open  # noqa: A004  (actstore.open(path), as zarr.open)

__version__ = "0.1.0"
__all__ = ["cache", "open", "CacheConfig", "ActivationStore", "CorpusSpec", "Site", "parse_sites", "load_model",
           "save_model", "ModelInfo", "StoreMeta", "patch_pairs", "PatchJobConfig", "PatchJobResult", "fit_probes",
           "ProbeConfig", "ProbeReport", "Probe", "Moments", "PromptPair", "make_pairs", "patching", "attribution", "tasks", "probes",
           "analysis", "circuits", "find_circuit", "CircuitJobConfig", "CircuitJobResult", "__version__", *_errors_all]
