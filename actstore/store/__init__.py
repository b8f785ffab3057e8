"""The Zarr store: its format (layout, codecs, creation, the done manifest, checked
reads, stats: store.format, the writer's side), the reader (ActivationStore), its typed
metadata, results, the training loader and verify."""

from ..deprecation import moved_names
from .format import Layout, is_store
from .loader import ActivationDataLoader, ActivationLoader, make_dataloader
from .meta import CorpusMeta, SiteMeta, StoreMeta
from .reader import ActivationStore, open_store
from .results import ResultWriter, write_result
from .verify import Damage, verify_store

__all__ = [
    "ActivationStore",
    "open_store",
    "is_store",
    "StoreMeta",
    "CorpusMeta",
    "SiteMeta",
    "Layout",
    "ResultWriter",
    "write_result",
    "ActivationLoader",
    "ActivationDataLoader",
    "make_dataloader",
    "verify_store",
    "Damage",
]

# the writer's side of the format left this package's top (docs/changelog.md)
__getattr__ = moved_names(
    __name__,
    {
        name: f"actstore.store.format.{name}"
        for name in (
            "FORMAT_VERSION",
            "INDEX_ARRAYS",
            "create_store",
            "estimate_bytes",
            "finalize_stats",
            "parse_codec",
            "plan_layout",
            "read_checked",
        )
    },
)
