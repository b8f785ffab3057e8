"""The Zarr store: its format (layout, codecs, creation, the done manifest, checked
reads, stats), the reader (ActivationStore), the training loader and verify."""

from .format import (FORMAT_VERSION, INDEX_ARRAYS, Layout, create_store, estimate_bytes, finalize_stats, is_store,
                     parse_codec, plan_layout, read_checked)
from .loader import ActivationDataLoader, ActivationLoader, make_dataloader
from .meta import CorpusMeta, SiteMeta, StoreMeta
from .reader import ActivationStore, open_store
from .results import ResultWriter, write_result
from .verify import Damage, verify_store

__all__ = ["FORMAT_VERSION", "INDEX_ARRAYS", "Layout", "create_store", "estimate_bytes", "finalize_stats", "is_store",
           "parse_codec", "plan_layout", "read_checked", "ActivationStore", "open_store", "ActivationLoader", "ActivationDataLoader",
           "make_dataloader", "Damage",
           "verify_store", "StoreMeta", "CorpusMeta", "SiteMeta", "ResultWriter",
           "write_result"]
