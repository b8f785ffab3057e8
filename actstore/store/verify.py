"""Integrity: check every object of a store against what its own metadata defines and
report what is damaged, lost or unfinished (repairing it is capture/repair.py's).

What is checked: the zarr.json of every group and array (missing, unreadable, or not
what ``attrs["actstore"]`` defines: see nodes.py), every finished shard of every array
(missing, empty, or failing its checksum), the manifest (entries damaged, shards not
done), the merged statistics of a complete store (equal to a merge of the per-shard
ones), the corpus plan, and every job result under ``results/``."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import zarr
from tqdm.auto import tqdm
from zarr.codecs import Crc32cCodec

from .format import INDEX_ARRAYS, merge_partials, shard_exists
from .nodes import as_defined, list_keys, node_problem, parents, parse_doc, read_key, site_shapes
from .reader import ActivationStore
from .site_stats import merged_stats, stats_unreadable
from .typed import array_at

__all__ = ["Damage", "verify_store", "FIXES"]

FIXES = {  # what `verify --repair` does about each kind of damage
    "rebuild": "metadata rebuilt from the store's own metadata",
    "recompute": "rows recomputed with the store's own config",
    "finish": "rows computed (the run did not finish them)",
    "stats": "statistics merged again from the per-shard ones",
    "plan": "corpus plan made again from the corpus",
    "manual": "not repairable from the store: delete it and rerun the job that wrote it",
}


@dataclass(frozen=True)
class Damage:
    array: str  # e.g. 'acts/blocks.3.hook_resid_post', 'tokens', 'done', 'stats/blocks.0.hook_resid_post'
    shard: int | None  # None: the whole array or node
    rows: tuple[int, int] | None  # [start, stop)
    problem: str
    fix: str = "recompute"  # a key of FIXES

    def __str__(self) -> str:
        where = (
            f": rows {self.rows[0]}..{self.rows[1] - 1} (shard {self.shard})"
            if self.rows is not None
            else ""
        )
        return f"{self.array}{where}: {self.problem}"


def _metadata(store: ActivationStore) -> list[Damage]:
    """Every node the store's metadata defines, checked (merged stats only where present)."""
    out = []
    for node, doc in store.expected.items():
        if node.startswith("stats/") and node != "stats/partials":
            continue  # checked with the statistics
        problem = node_problem(store.group.store, node, doc)
        if problem is not None:
            out.append(Damage(node, None, None, problem, "rebuild"))
    return out


def _read_done(store: ActivationStore, arr: zarr.Array) -> tuple[np.ndarray, list[Damage]]:
    lay = store.layout
    done, damage = np.zeros(lay.n_shards, bool), []
    for k in range(lay.n_shards):
        try:
            done[k] = bool(arr[k]) if shard_exists(arr, k) else False
            if not done[k] and shard_exists(arr, k, empty=True):
                damage.append(Damage("done", k, lay.shard_rows(k), "manifest entry is empty"))
        except ValueError as e:
            damage.append(
                Damage("done", k, lay.shard_rows(k), f"manifest entry fails its checksum ({e})")
            )
    return done, damage


def _not_done(store: ActivationStore, done: np.ndarray, damaged: set[int]) -> list[Damage]:
    """One entry per run of consecutive shards not done (and not damaged)."""
    out: list[Damage] = []
    lay = store.layout
    todo = np.array([k for k in np.flatnonzero(~done) if int(k) not in damaged], dtype=int)
    for run in np.split(todo, np.flatnonzero(np.diff(todo) != 1) + 1) if len(todo) else []:
        first, last = int(run[0]), int(run[-1])
        what = f"shard {first} is" if first == last else f"shards {first}..{last} are"
        out.append(
            Damage(
                "done",
                first,
                (lay.shard_rows(first)[0], lay.shard_rows(last)[1]),
                f"not done: {what} not finished",
                "finish",
            )
        )
    return out


def _stats(store: ActivationStore, done: np.ndarray) -> list[Damage]:
    """The merged statistics of a complete store: present, readable and equal to a merge of the partials."""
    out = []
    for hook, shape in site_shapes(store.meta).items():
        if shape.feature_shape is None:
            continue
        name = f"stats/{hook}"
        nodes = [name] + [f"{name}/{n}" for n in ("count", "mean", "M2")]
        problems = [
            f"'{n}': {p}"
            for n in nodes
            if (p := node_problem(store.group.store, n, store.expected[n]))
        ]
        if not problems:
            try:
                have = merged_stats(store, hook)
                m = merge_partials(array_at(store.group, "stats/partials"), hook, done)
                if isinstance(have, str):
                    problems.append(have)
                elif not (
                    have.count == m.count
                    and np.array_equal(have.mean, m.mean)
                    and np.array_equal(have.m2, m.m2)
                ):
                    problems.append("differs from the merge of the per-shard statistics")
            except (
                ValueError,
                RuntimeError,
            ) as e:  # a checksum, or a codec of a store written before them
                problems.append(stats_unreadable(hook, e))
        if problems:
            out.append(Damage(name, None, None, "; ".join(problems), "stats"))
    return out


def _plan(store: ActivationStore) -> list[Damage]:
    if "plan" not in store.expected:
        return []
    arr = array_at(store.group, "plan")
    try:
        if shard_exists(arr, 0):
            arr[...]
            return []
        problem = "its object is missing or empty"
    except ValueError as e:
        problem = f"fails its checksum ({e})"
    return [Damage("plan", None, None, problem, "plan")]


def _lost_chunks(arr: zarr.Array) -> str | None:
    """Read ``arr`` whole; where it was written with checksums and every chunk (results since
    format 2's checksums), also say which chunk objects are missing or empty."""
    arr[...]
    # v2 metadata has none
    if not any(isinstance(c, Crc32cCodec) for c in getattr(arr.metadata, "codecs", ())):
        return None
    grid = itertools.product(*(range(-(-s // c)) for s, c in zip(arr.shape, arr.chunks)))
    keys = [f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}" for coords in grid]
    lost = [k for k in keys if not (read_key(arr.store, k) or b"")]
    return f"chunk objects missing or empty: {', '.join(lost[:4])}" if lost else None


def _results(store: ActivationStore) -> list[Damage]:
    """Every node under results/: metadata readable and of the right kind (a node above
    another is a group, one with chunks an array), every array's chunks there and passing
    their checksums. A group's zarr.json can be rebuilt (results' groups have no
    attributes); a damaged array cannot."""
    st = store.group.store
    keys = list_keys(st, "results/")
    docs = {
        k[: -len("/zarr.json")]: parse_doc(read_key(st, k) or b"")[0]
        for k in keys
        if k.endswith("/zarr.json")
    }
    chunked = {
        k.split("/c/")[0] if "/c/" in k else k[:-2] for k in keys if not k.endswith("zarr.json")
    }
    arrays = chunked | {
        n for n, d in docs.items() if isinstance(d, dict) and d.get("node_type") == "array"
    }
    groups = set(parents(docs.keys() | chunked))
    out = []
    for node in sorted(groups | arrays | docs.keys()):
        problem = node_problem(st, node, None)
        kind = "group" if node in groups else "array" if node in chunked else None
        if problem is None and kind is not None and docs[node].get("node_type") != kind:
            problem = f"its metadata (zarr.json) says it is not a Zarr {kind}"
        if problem is None and node in arrays and node not in groups:
            try:
                problem = _lost_chunks(store.group[node])  # type: ignore[arg-type]
            except Exception as e:  # noqa: BLE001 - whatever zarr makes of a damaged object
                problem = f"cannot be read ({type(e).__name__}: {str(e)[:80]})"
        if problem is not None:
            out.append(Damage(node, None, None, problem, "rebuild" if node in groups else "manual"))
    return out


def verify_store(path: str, progress: bool = True) -> list[Damage]:
    """Every problem of ``path``, the rows not done included; empty when the store is
    complete and sound. A store whose root metadata is damaged raises StoreDamagedError."""
    store = ActivationStore.open(path)
    lay = store.layout
    damage = _metadata(store)
    bad = {d.array for d in damage}
    done, damage_done = _read_done(
        store,
        as_defined(store.group, "done", store.expected["done"])
        if "done" in bad
        else array_at(store.group, "done"),
    )
    damage += damage_done
    names = [
        n
        for n in [*INDEX_ARRAYS, *(f"acts/{h}" for h in store.sites), "stats/partials"]
        if n in store.expected
    ]
    bar = tqdm(
        total=int(done.sum()) * len(names), unit="shard", desc="verify", disable=not progress
    )
    for name in names:  # an array whose zarr.json is damaged is read as its metadata defines it
        arr = (
            as_defined(store.group, name, store.expected[name])
            if name in bad
            else array_at(store.group, name)
        )
        for k in np.flatnonzero(done):
            a, b = lay.shard_rows(int(k))
            if not shard_exists(arr, int(k)):
                damage.append(Damage(name, int(k), (a, b), "object missing or empty"))
            else:
                try:
                    arr[int(k)] if name == "stats/partials" else arr[a:b]
                except ValueError as e:
                    damage.append(Damage(name, int(k), (a, b), f"fails its checksum ({e})"))
            bar.update()
    bar.close()
    recompute = {d.shard for d in damage if d.shard is not None}
    damage += _not_done(store, done, recompute)
    if (
        done.all()
        and not recompute
        and "stats/partials" in store.expected
        and not bad & {"stats", "stats/partials"}
    ):
        damage += _stats(store, done)
    damage += _plan(store) if "plan" not in bad else []
    damage += _results(store)
    return sorted(damage, key=lambda d: (-1 if d.shard is None else d.shard, d.array))
