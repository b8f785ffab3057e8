"""actstore: a batched activation-caching engine for mechanistic interpretability.

    import actstore
    store = actstore.cache(out="acts.zarr", model="actstore-demo", dataset="actstore-demo",
                           sites="resid_post:all", n_rows=64)
    store.acts("blocks.0.hook_resid_post", rows=slice(0, 8))  # (row, pos, d_model)
    store = actstore.open("acts.zarr")                          # later, or elsewhere

The jobs over a store are here too: ``actstore.patching`` (and ``.attribution``,
``.tasks``), ``actstore.probes`` and ``actstore.analysis``.
"""

from . import analysis, patching, probes
from .capture import CacheConfig, cache
from .corpus import CorpusSpec
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from .models import ModelInfo, load_model
from .patching import attribution, tasks
from .patching.tasks import PromptPair, make_pairs
from .sites import Site, parse_sites
from .stats import Moments
from .store import ActivationStore, StoreMeta
from .store import open_store as open  # noqa: A004  (actstore.open(path), as zarr.open)

__version__ = "0.1.0"
__all__ = ["cache", "open", "CacheConfig", "ActivationStore", "CorpusSpec", "Site", "parse_sites", "load_model",
           "ModelInfo", "StoreMeta", "Moments", "PromptPair", "make_pairs", "patching", "attribution", "tasks", "probes",
           "analysis", "__version__", *_errors_all]
