"""Integrity: read every finished shard of every array, report what is missing or
fails its checksum, and recompute exactly those shards (rows are deterministic)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from tqdm.auto import tqdm

from .cache import CacheConfig, cache
from .errors import ConfigError
from .sites import Site
from .store import INDEX_ARRAYS, ActivationStore, shard_exists

__all__ = ["Damage", "verify_store", "repair_store", "config_from_metadata"]


@dataclass(frozen=True)
class Damage:
    array: str  # e.g. 'acts/blocks.3.hook_resid_post', 'tokens', 'done'
    shard: int
    rows: tuple[int, int]  # [start, stop)
    problem: str

    def __str__(self) -> str:
        return f"{self.array}: rows {self.rows[0]}..{self.rows[1] - 1} (shard {self.shard}): {self.problem}"


def _arrays(store: ActivationStore) -> list[str]:
    names = [n for n in INDEX_ARRAYS if n in store.group] + [f"acts/{h}" for h in store.sites]
    return names + (["stats/partials"] if "stats/partials" in store.group else [])


def _read_done(store: ActivationStore) -> tuple[np.ndarray, list[Damage]]:
    arr, lay = store.group["done"], store.layout
    done, damage = np.zeros(lay.n_shards, bool), []
    for k in range(lay.n_shards):
        try:
            done[k] = bool(arr[k]) if shard_exists(arr, k) else False
        except ValueError as e:
            damage.append(Damage("done", k, lay.shard_rows(k), f"manifest entry fails its checksum ({e})"))
    return done, damage


def verify_store(path: str, progress: bool = True) -> list[Damage]:
    """Every problem in the finished shards of ``path``; empty when the store is sound."""
    store = ActivationStore.open(path)
    lay = store.layout
    done, damage = _read_done(store)
    names = _arrays(store)
    bar = tqdm(total=int(done.sum()) * len(names), unit="shard", desc="verify", disable=not progress)
    for name in names:
        arr = store.group[name]
        for k in np.flatnonzero(done):
            a, b = lay.shard_rows(int(k))
            if not shard_exists(arr, int(k)):
                damage.append(Damage(name, int(k), (a, b), "object missing"))
            else:
                try:
                    arr[a:b]
                except ValueError as e:
                    damage.append(Damage(name, int(k), (a, b), f"fails its checksum ({e})"))
            bar.update()
    bar.close()
    return sorted(damage, key=lambda d: (d.shard, d.array))


def config_from_metadata(meta: dict[str, Any], out: str, model: str | None = None, device: str = "auto",
                         progress: bool = True) -> CacheConfig:
    """The config that made a store, to resume or repair it."""
    corpus = meta["corpus"]
    if corpus["kind"] == "python-list":
        raise ConfigError("This store was made from a Python list, which the store does not keep; call "
                          "actstore.cache(...) again with the same list and resume=True to recompute unfinished rows.")
    lay = meta["layout"]
    return CacheConfig(
        out=out, model=model or meta["model"]["name"], dataset=corpus["source"], split=corpus["split"],
        text_field=corpus["text_field"], dataset_config=corpus["config_name"], dataset_revision=corpus["revision"],
        model_revision=meta["model"]["revision"], seq_len=corpus["seq_len"], n_rows=lay["n_rows"],
        packing=corpus["packing"], sites=[Site(s["hook"], s["layer"], None if s["heads"] is None else tuple(s["heads"]))
                                          for s in meta["sites"]],
        dtype=meta["model"]["dtype"], storage_dtype=meta["storage_dtype"], codec=meta["codec"],
        rows_per_chunk=lay["rows_per_chunk"], rows_per_shard=lay["rows_per_shard"], device=device,
        resume=True, progress=progress, command_line=meta.get("command_line"),
    )


def repair_store(path: str, damage: list[Damage], model: str | None = None, device: str = "auto",
                 progress: bool = True) -> ActivationStore:
    """Mark the damaged shards not done and recompute them with the store's own
    config (bit-identical on the same kind of device and software)."""
    store = ActivationStore.open(path)
    cfg = config_from_metadata(store.metadata, path, model, device, progress)
    done = zarr.open_group(path, mode="r+")["done"]
    for k in sorted({d.shard for d in damage}):
        done[k] = False
    return cache(cfg)
