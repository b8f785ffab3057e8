"""The caching engine: plan, forward with capture hooks, staging into host buffers, the
pipelined shard writer, atomic shard I/O, batch sizes, the store lock, progress, and
repair of damaged shards."""

from .config import CacheConfig
from .engine import cache
from .repair import config_from_metadata, repair_store

__all__ = ["CacheConfig", "cache", "repair_store", "config_from_metadata"]
