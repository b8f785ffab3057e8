"""Repair what verify found, from the store's own metadata: rewrite the metadata it defines
(array and group zarr.json), merge the statistics again, make the corpus plan again, mark
damaged shards not done and recompute them, and finish shards not done, with the store's
own config (rows are deterministic, so the bytes are those of an undamaged store)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from .. import location
from ..corpus import scan
from ..errors import ConfigError
from ..models import ModelLike
from ..store import ActivationStore, Damage, StoreMeta, verify_store
from ..store.format import finalize_stats
from ..store.nodes import group_doc, write_key
from ..store.typed import array_at
from .config import CacheConfig
from .engine import cache
from .lock import store_lock
from .reads import make_plan

__all__ = ["repair_store", "config_from_metadata"]


def config_from_metadata(
    meta: StoreMeta | Mapping[str, Any],
    out: str,
    model: ModelLike | None = None,
    device: str = "auto",
    progress: bool = True,
) -> CacheConfig:
    """The config that made a store (its typed metadata, or ``attrs["actstore"]``), to resume or repair it;
    ``model`` replaces the recorded one (a name, or a TransformerBridge in memory: its weights are checked)."""
    m = meta if isinstance(meta, StoreMeta) else StoreMeta.from_dict(meta, out)
    corpus, lay = m.corpus, m.layout
    if model is None and m.model.in_memory:
        raise ConfigError(
            f"This store was cached from a model held in memory ('{m.model.name}'), which the "
            "store does not keep; pass that model (repair_store(path, damage, model=bridge)), or a folder "
            "it was saved to with actstore.models.save_model (--model FOLDER)."
        )
    if corpus.kind == "python-list":
        raise ConfigError(
            "This store was made from a Python list, which the store does not keep; call "
            "actstore.cache(...) again with the same list and resume=True to recompute unfinished rows."
        )
    return CacheConfig(
        out=out,
        model=model or m.model.name,
        dataset=corpus.dataset,
        split=corpus.split,
        text_field=corpus.text_field,
        dataset_config=corpus.config_name,
        dataset_revision=corpus.revision,
        model_revision=m.model.revision if model is None or isinstance(model, str) else None,
        seq_len=corpus.seq_len,
        n_rows=lay.n_rows,
        packing=corpus.packing,
        sites=[s.site for s in m.sites],
        dtype=m.model.dtype,
        storage_dtype=m.storage_dtype,
        codec=m.codec,
        rows_per_chunk=lay.rows_per_chunk,
        rows_per_shard=lay.rows_per_shard,
        device=device,
        engine=m.engine,
        resume=True,
        progress=progress,
        command_line=m.command_line,
    )


def _rebuild_metadata(store: ActivationStore, group: zarr.Group, damage: list[Damage]) -> bool:
    """Write back the zarr.json of every node whose metadata is damaged; whether any was."""
    todo = [d.array for d in damage if d.fix == "rebuild"]
    for name in todo:
        write_key(group.store, f"{name}/zarr.json", store.expected.get(name) or group_doc())
    return bool(todo)


def _remake_plan(store: ActivationStore, cfg: CacheConfig, group: zarr.Group) -> None:
    """The corpus plan again, from the same pass over the corpus that made it."""
    spec = cfg.corpus_spec(store.layout.seq_len)
    scanned = (
        None
        if spec.kind in ("hub", "synthetic")
        else scan(spec, store.tokenizer, limit=store.n_rows)
    )
    array_at(group, "plan")[...] = make_plan(spec, scanned, store.layout)


def repair_store(
    path: str,
    damage: list[Damage],
    model: ModelLike | None = None,
    device: str = "auto",
    progress: bool = True,
) -> ActivationStore:
    """Repair ``damage`` (from :func:`verify_store`): rebuild what the store's metadata
    defines, then mark the damaged shards not done and recompute them, and every shard not
    done, with the store's own config (bit-identical on the same kind of device and
    software). What cannot be repaired from the store (a damaged job result) is left; verify
    again to see it. The store's lock is taken first: while a live run holds it (it is
    writing the store, so ``damage`` may be its work in progress), StoreLockedError, and
    nothing is changed."""
    # no store, or its root damaged: said before a lock file is made beside it
    ActivationStore.open(path)
    lock = nullcontext() if location.is_url(path) else store_lock(location.normalize(path))
    with lock:
        return _repair(path, damage, model, device, progress)


def _repair(
    path: str, damage: list[Damage], model: ModelLike | None, device: str, progress: bool
) -> ActivationStore:
    store = ActivationStore.open(path)
    cfg = config_from_metadata(store.meta, path, model, device, progress)  # before anything changes
    group = zarr.open_group(path, mode="r+")
    if _rebuild_metadata(store, group, damage):  # the arrays are readable again: check their chunks
        damage = verify_store(path, progress=False)
        _rebuild_metadata(store, group, damage)
        group = zarr.open_group(path, mode="r+")
    recompute = sorted(
        {d.shard for d in damage if d.fix in ("recompute", "finish") and d.shard is not None}
    )
    for d in damage:
        if d.fix == "stats":  # merged again below, from the partials
            sync(group.store.delete_dir(d.array))
        if d.fix == "plan":
            _remake_plan(store, cfg, group)
    if not recompute:
        if np.asarray(array_at(group, "done")[:]).all():
            finalize_stats(group, store.sites)
        return ActivationStore.open(path)
    for k in recompute:
        array_at(group, "done")[k] = False
    return cache(cfg)
