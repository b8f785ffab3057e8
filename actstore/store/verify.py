"""Integrity: read every finished shard of every array and report what is missing or
fails its checksum (recomputing those shards is capture/repair.py's)."""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
from tqdm.auto import tqdm

from .format import INDEX_ARRAYS, shard_exists
from .reader import ActivationStore

__all__ = ["Damage", "verify_store"]


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
