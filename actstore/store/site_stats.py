"""A site's statistics as a store holds them, read and checked: the merged ones
(``stats/<hook>``) once every shard is done, else merged from the per-shard partials of the
done shards (``stats/partials``). What is missing or fails its checksum is StoreDamagedError
naming the fix; :func:`merged_stats` is also ``actstore verify``'s check of them."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..stats import Moments
from .base import StoreLike
from .format import merge_partials, shard_exists
from .nodes import chunk_present, damaged, read_key

__all__ = ["site_stats", "merged_stats", "stats_unreadable"]


def site_stats(store: StoreLike, hook: str) -> Moments:
    """Per-feature count, mean and M2 (float64) over the done rows of ``hook``
    (positions outside ``mask`` excluded), merged in shard order: :meth:`ActivationStore.stats`."""
    store.site(hook)
    if store.meta.site(hook).dims.count("pos") != 1:
        raise ConfigError(
            f"Site {hook} has no stats (attention patterns have no single position axis)."
        )
    done = store.done
    final = f"stats/{hook}"
    try:
        if done.all() and read_key(store.group.store, f"{final}/mean/zarr.json") is not None:
            merged = merged_stats(store, hook)
            if isinstance(merged, str):
                raise damaged(store.path, final, merged)
            return merged
        if read_key(store.group.store, "stats/partials/zarr.json") is None:
            raise damaged(store.path, "stats", "the statistics are missing (stats/partials)")
        partials = store.array("stats/partials")
        lost = [int(k) for k in np.flatnonzero(done) if not shard_exists(partials, int(k))]
        if lost:
            raise damaged(
                store.path, "stats/partials", f"the statistics of shards {lost[:8]} are missing"
            )
        return merge_partials(partials, hook, done)
    except (
        ValueError,
        RuntimeError,
    ) as e:  # a checksum, or a codec of a store written before them
        if isinstance(e, ValueError) and "checksum" not in str(e):
            raise
        raise damaged(store.path, "stats", stats_unreadable(hook, e)) from e


def stats_unreadable(hook: str, e: Exception) -> str:
    """What is wrong with statistics that raised ``e`` (a checksum, or a codec of a store
    written before them) when read."""
    return f"the statistics of {hook} cannot be read ({str(e)[:80]})"


def merged_stats(store: StoreLike, hook: str) -> Moments | str:
    """The merged statistics of ``hook`` (``stats/<hook>``, their metadata checked by
    :meth:`ActivationStore.array`), or what is wrong with their objects: the one check of
    them, which :meth:`ActivationStore.stats` raises and ``actstore verify`` reports. A
    ValueError other than a checksum's is raised."""
    final = f"stats/{hook}"
    try:
        count, mean, m2 = (store.array(f"{final}/{n}") for n in ("count", "mean", "M2"))
        if not all(map(chunk_present, (count, mean, m2))):
            return "an object of the merged statistics is missing or empty"
        return Moments(int(np.asarray(count[()])), np.asarray(mean[...]), np.asarray(m2[...]))
    except (ValueError, RuntimeError) as e:
        if isinstance(e, ValueError) and "checksum" not in str(e):
            raise
        return stats_unreadable(hook, e)
