"""Repair: mark damaged shards not done and recompute exactly those with the store's
own config (rows are deterministic, so the bytes are those of an undamaged store)."""

from __future__ import annotations

from typing import Any, Mapping

import zarr

from ..errors import ConfigError
from ..models import ModelLike
from ..store import ActivationStore, Damage, StoreMeta
from .engine import CacheConfig, cache

__all__ = ["repair_store", "config_from_metadata"]


def config_from_metadata(meta: StoreMeta | Mapping[str, Any], out: str, model: ModelLike | None = None,
                         device: str = "auto", progress: bool = True) -> CacheConfig:
    """The config that made a store (its typed metadata, or ``attrs["actstore"]``), to resume or repair it;
    ``model`` replaces the recorded one (a name, or a TransformerBridge in memory: its weights are checked)."""
    m = meta if isinstance(meta, StoreMeta) else StoreMeta.from_dict(meta, out)
    corpus, lay = m.corpus, m.layout
    if model is None and m.model.in_memory:
        raise ConfigError(f"This store was cached from a model held in memory ('{m.model.name}'), which the "
                          "store does not keep; pass that model (repair_store(path, damage, model=bridge)), or a folder "
                          "it was saved to with actstore.models.save_model (--model FOLDER).")
    if corpus.kind == "python-list":
        raise ConfigError("This store was made from a Python list, which the store does not keep; call "
                          "actstore.cache(...) again with the same list and resume=True to recompute unfinished rows.")
    return CacheConfig(
        out=out, model=model or m.model.name, dataset=corpus.dataset, split=corpus.split,
        text_field=corpus.text_field, dataset_config=corpus.config_name, dataset_revision=corpus.revision,
        model_revision=m.model.revision if model is None or isinstance(model, str) else None,
        seq_len=corpus.seq_len, n_rows=lay.n_rows, packing=corpus.packing,
        sites=[s.site for s in m.sites], dtype=m.model.dtype, storage_dtype=m.storage_dtype, codec=m.codec,
        rows_per_chunk=lay.rows_per_chunk, rows_per_shard=lay.rows_per_shard, device=device,
        resume=True, progress=progress, command_line=m.command_line,
    )


def repair_store(path: str, damage: list[Damage], model: ModelLike | None = None, device: str = "auto",
                 progress: bool = True) -> ActivationStore:
    """Mark the damaged shards not done and recompute them with the store's own
    config (bit-identical on the same kind of device and software)."""
    store = ActivationStore.open(path)
    cfg = config_from_metadata(store.meta, path, model, device, progress)
    done = zarr.open_group(path, mode="r+")["done"]
    for k in sorted({d.shard for d in damage}):
        done[k] = False
    return cache(cfg)
