"""Probe targets: one label per (row, pos) of a store, computed block by block.

Built in: ``position`` (position in the row), ``doc_pos`` (position in the source
document), ``token`` (the current token), ``next_token`` (the token at pos + 1; the last
position of a row and positions before padding have none), ``doc`` (index of the source
document). Or a user array (row, pos) aligned with the store, in memory or a ``.npy``
file (memory-mapped, so it need not fit in memory): integer arrays are classes with
negative values meaning "no label"; float arrays are regression targets with NaN
meaning "no label". BOS (pos 0 of every row) carries doc = doc_pos = -1, so document
targets never label it; the probe drops it anyway unless asked not to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..store import ActivationStore

__all__ = ["BUILTIN_TARGETS", "Target", "parse_target", "split_rows", "ClassPlan", "class_plan"]

BUILTIN_TARGETS = ("position", "doc_pos", "token", "next_token", "doc")
_NUMERIC = ("position", "doc_pos")  # built-ins that are also meaningful as numbers (ridge)


@dataclass(frozen=True)
class Target:
    """What a probe predicts at each kept (row, pos)."""

    name: str  # a built-in name, or the file's stem / 'labels' for an array
    categorical: bool  # integer classes (logistic) or real values (ridge)
    array: np.ndarray | None = None  # user labels (row, pos); None for built-ins

    @property
    def numeric(self) -> bool:
        """Whether the label is meaningful as a number (so ridge applies)."""
        return self.array is not None or self.name in _NUMERIC

    def labels(self, store: "ActivationStore", rows: slice) -> np.ndarray:
        """(row, pos) labels of ``rows``: int64 with -1 for none, or float64 with NaN."""
        a, b, _ = rows.indices(store.n_rows)
        if self.array is not None:
            out = np.asarray(self.array[a:b])
            return out.astype(np.int64) if self.categorical else out.astype(np.float64)
        L = store.layout.seq_len
        if self.name == "position":
            return np.broadcast_to(np.arange(L, dtype=np.int64), (b - a, L)).copy()
        if self.name == "doc_pos":
            return store.doc_pos(rows, check_done=False).astype(np.int64)
        if self.name == "doc":
            return store.doc(rows, check_done=False).astype(np.int64)
        tokens = store.tokens(rows, check_done=False).astype(np.int64)
        if self.name == "token":
            return tokens
        out = np.full_like(tokens, -1)  # next_token
        out[:, :-1] = np.where(store.mask(rows, check_done=False)[:, 1:], tokens[:, 1:], -1)
        return out


def parse_target(target: str | os.PathLike[str] | np.ndarray, store: "ActivationStore") -> Target:
    """A built-in name, a .npy path, or an array (row, pos) aligned with the store."""
    if isinstance(target, str) and target in BUILTIN_TARGETS:
        return Target(target, categorical=True)
    name = "labels"
    if isinstance(target, (str, os.PathLike)):
        path = Path(target)
        if path.suffix != ".npy":
            raise ConfigError(f"Unknown target '{target}'; expected one of {', '.join(BUILTIN_TARGETS)}, "
                              "or a .npy file of labels (row, pos).")
        if not path.is_file():
            raise ConfigError(f"Target file '{target}' not found; pass a .npy array of labels (row, pos).")
        target, name = np.load(path, mmap_mode="r"), path.stem
    array = target
    want = (store.n_rows, store.layout.seq_len)
    if not isinstance(array, np.ndarray) or array.shape != want:
        shape = getattr(array, "shape", type(array).__name__)
        raise ConfigError(f"Target labels must be an array of shape (row, pos) = {want} aligned with the store; "
                          f"got {shape}.")
    if array.dtype.kind in "iub":
        return Target(name, categorical=True, array=array)
    if array.dtype.kind == "f":
        return Target(name, categorical=False, array=array)
    raise ConfigError(f"Target labels must be integers (classes) or floats (regression); got dtype {array.dtype}.")


def split_rows(n_rows: int, test_frac: float, seed: int) -> np.ndarray:
    """bool (row,): True for test rows. A fixed number of rows, round(test_frac * n_rows)
    (at least one when test_frac > 0), drawn by a generator seeded with ``seed``, so no
    sequence lands in both splits and a seed gives the same split everywhere."""
    if not 0.0 <= test_frac < 1.0:
        raise ConfigError(f"test_frac must be in [0, 1); got {test_frac}.")
    n_test = max(1, round(test_frac * n_rows)) if test_frac > 0 else 0
    if n_test >= n_rows:
        raise ConfigError(f"test_frac {test_frac} leaves no training rows out of {n_rows}; pass a smaller one.")
    test = np.zeros(n_rows, bool)
    test[np.random.default_rng(seed).permutation(n_rows)[:n_test]] = True
    return test


@dataclass(frozen=True)
class ClassPlan:
    """The classes a classifier is trained on, and how many positions each split uses."""

    classes: np.ndarray  # int64 (class,) sorted: labels seen in the training rows (the K most frequent)
    class_w: np.ndarray  # float64 (class,) sample weight of each class
    n_train: int  # training positions whose label is a kept class
    n_test: int  # test positions whose label is a kept class
    n_train_dropped: int  # training positions of classes beyond max_classes: not labels
    n_test_unseen: int  # test positions whose class is not kept: not scored
    majority_test: int  # test positions of the most frequent training class
    sw_sum: float  # sum of the training sample weights


def class_plan(store: "ActivationStore", target: Target, test_rows: np.ndarray, skip_bos: bool,
               max_classes: int | None = None, class_weight: str | None = None) -> ClassPlan:
    """One cheap pass over the labels (no activations). Classes are those seen in the
    training rows, so a 50k-token vocabulary costs only the tokens that occur; a test
    label never seen in training cannot be predicted and is left out of the score
    (counted in n_test_unseen). ``max_classes`` keeps the most frequent ones (ties to the
    smaller label); 'balanced' weights are scikit-learn's n / (n_classes * count)."""
    from ..store.loader import keep_positions, row_units

    seen: dict[bool, list[tuple[np.ndarray, np.ndarray]]] = {False: [], True: []}
    for unit in row_units(store, rows_per_unit=4096):
        keep = keep_positions(store, unit, skip_bos, skip_padding=True)
        y = target.labels(store, unit)
        test = np.broadcast_to(test_rows[unit][:, None], y.shape)
        for split in (False, True):
            seen[split].append(np.unique(y[keep & (y >= 0) & (test == split)], return_counts=True))
    classes, counts = _total(seen[False])
    n_labelled = int(counts.sum())
    if max_classes is not None and len(classes) > max_classes:
        top = np.sort(np.lexsort((classes, -counts))[:max_classes])
        classes, counts = classes[top], counts[top]
    if len(classes) < 2:
        raise ConfigError(f"Target '{target.name}' has {len(classes)} class(es) in the training rows; "
                          "a classifier needs at least 2. Check the target, or pass more rows or a different split.")
    tv, tc = _total(seen[True])
    in_train = np.isin(tv, classes)
    class_w = counts.sum() / (len(classes) * counts) if class_weight == "balanced" else np.ones(len(classes))
    majority = classes[np.argmax(counts)]
    return ClassPlan(classes, class_w, int(counts.sum()), int(tc[in_train].sum()), n_labelled - int(counts.sum()),
                     int(tc[~in_train].sum()), int(tc[tv == majority].sum()), float((counts * class_w).sum()))


def _total(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-block (values, counts) into sorted values and total counts."""
    values = np.concatenate([p[0] for p in parts]).astype(np.int64)
    u, inv = np.unique(values, return_inverse=True)
    return u, np.bincount(inv, weights=np.concatenate([p[1] for p in parts]), minlength=len(u)).astype(np.int64)
