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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..store import ActivationStore

__all__ = [
    "BUILTIN_TARGETS",
    "Target",
    "parse_target",
    "split_rows",
    "ClassPlan",
    "class_plan",
    "check_values",
    "check_regression",
]

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

    def labels(self, store: ActivationStore, rows: slice) -> np.ndarray:
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


def parse_target(target: str | os.PathLike[str] | np.ndarray, store: ActivationStore) -> Target:
    """A built-in name, a .npy path, or an array (row, pos) aligned with the store."""
    if isinstance(target, str) and target in BUILTIN_TARGETS:
        return Target(target, categorical=True)
    name = "labels"
    if isinstance(target, (str, os.PathLike)):
        path = Path(target)
        if path.suffix != ".npy":
            raise ConfigError(
                f"Unknown target '{target}'; expected one of {', '.join(BUILTIN_TARGETS)}, "
                "or a .npy file of labels (row, pos)."
            )
        if not path.is_file():
            raise ConfigError(
                f"Target file '{target}' not found; pass a .npy array of labels (row, pos)."
            )
        try:
            with open(path, "rb") as f:
                if f.read(6) != b"\x93NUMPY":
                    raise ValueError("it has no .npy header")
            target, name = np.load(path, mmap_mode="r", allow_pickle=False), path.stem
        except (ValueError, OSError, EOFError) as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0].rstrip(".")
            raise ConfigError(
                f"Target file '{path}' is not a NumPy .npy array ({reason}); save the labels "
                "with numpy.save(path, labels), labels an int or float array (row, pos)."
            ) from None
    array = target
    want = (store.n_rows, store.layout.seq_len)
    if not isinstance(array, np.ndarray) or array.shape != want:
        shape = getattr(array, "shape", type(array).__name__)
        raise ConfigError(
            f"Target labels must be an array of shape (row, pos) = {want} aligned with the store; "
            f"got {shape}."
        )
    if array.dtype.kind not in "iubf":
        raise ConfigError(
            f"Target labels must be integers (classes) or floats (regression); got dtype {array.dtype}."
        )
    check_values(array, name)
    return Target(name, categorical=array.dtype.kind != "f", array=array)


def check_values(array: np.ndarray, name: str, rows_per_block: int = 65536) -> None:
    """Refuse labels that are not what they claim: infinite floats, integers beyond int64,
    or no label at all. Read in blocks of rows (a memory-mapped file need not fit in memory)."""
    n_bad, first, n_labelled = 0, (0, 0), 0
    floats = array.dtype.kind == "f"
    for a in range(0, len(array), rows_per_block):
        block = np.asarray(array[a : a + rows_per_block])
        if floats:
            bad, labelled = np.isinf(block), ~np.isnan(block)
        elif array.dtype.kind == "u" and array.dtype.itemsize == 8:
            bad, labelled = block > np.iinfo(np.int64).max, np.ones(block.shape, bool)
        else:
            bad, labelled = np.zeros(block.shape, bool), block >= 0
        if not n_bad and bad.any():
            r, p = np.argwhere(bad)[0]
            first = (a + int(r), int(p))
        n_bad += int(bad.sum())
        n_labelled += int((labelled & ~bad).sum())
    if n_bad:
        what = (
            f"infinite value{'s' * (n_bad != 1)}"
            if floats
            else f"value{'s' * (n_bad != 1)} beyond int64"
        )
        raise ConfigError(
            f"Target '{name}' holds {n_bad} {what} (first at row {first[0]}, "
            f"pos {first[1]}); mark positions without a label with "
            f"{'NaN' if floats else 'a negative value'} and make every label "
            f"{'finite' if floats else 'fit in int64'}."
        )
    if not n_labelled:
        none = "NaN" if floats else "negative"
        raise ConfigError(
            f"Target '{name}' labels no position (every value is {none}, which means 'no label'); "
            "pass labels for at least the training rows."
        )


def split_rows(n_rows: int, test_frac: float, seed: int) -> np.ndarray:
    """bool (row,): True for test rows. A fixed number of rows, round(test_frac * n_rows)
    (at least one when test_frac > 0), drawn by a generator seeded with ``seed``, so no
    sequence lands in both splits and a seed gives the same split everywhere."""
    if not 0.0 <= test_frac < 1.0:
        raise ConfigError(f"test_frac must be in [0, 1); got {test_frac}.")
    n_test = max(1, round(test_frac * n_rows)) if test_frac > 0 else 0
    if n_test >= n_rows:
        raise ConfigError(
            f"test_frac {test_frac} leaves no training rows out of {n_rows}; pass a smaller one."
        )
    test = np.zeros(n_rows, bool)
    test[np.random.default_rng(seed).permutation(n_rows)[:n_test]] = True
    return test


@dataclass(frozen=True)
class ClassPlan:
    """The classes a classifier is trained on, and how many positions each split uses."""

    # int64 (class,) sorted: labels seen in the training rows (the K most frequent)
    classes: np.ndarray
    class_w: np.ndarray  # float64 (class,) sample weight of each class
    n_train: int  # training positions whose label is a kept class
    n_test: int  # test positions whose label is a kept class
    n_train_dropped: int  # training positions of classes beyond max_classes: not labels
    n_test_unseen: int  # test positions whose class is not kept: not scored
    majority_test: int  # test positions of the most frequent training class
    sw_sum: float  # sum of the training sample weights


def class_plan(
    store: ActivationStore,
    target: Target,
    test_rows: np.ndarray,
    skip_bos: bool,
    max_classes: int | None = None,
    class_weight: str | None = None,
) -> ClassPlan:
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
        raise ConfigError(
            f"Target '{target.name}' has {len(classes)} class(es) in the training rows; "
            "a classifier needs at least 2. Check the target, or pass more rows or a different split."
        )
    tv, tc = _total(seen[True])
    in_train = np.isin(tv, classes)
    _check_test(
        target,
        int(tc[in_train].sum()),
        bool(test_rows.any()),
        "whose class occurs in the training rows",
    )
    class_w = (
        counts.sum() / (len(classes) * counts)
        if class_weight == "balanced"
        else np.ones(len(classes))
    )
    majority = classes[np.argmax(counts)]
    return ClassPlan(
        classes,
        class_w,
        int(counts.sum()),
        int(tc[in_train].sum()),
        n_labelled - int(counts.sum()),
        int(tc[~in_train].sum()),
        int(tc[tv == majority].sum()),
        float((counts * class_w).sum()),
    )


def check_regression(
    store: ActivationStore, target: Target, test_rows: np.ndarray, skip_bos: bool
) -> None:
    """One cheap pass over real-valued labels (no activations): refuse, before any work, a
    split whose R^2 is undefined (fewer than 2 labelled training positions, a constant
    training target, no labelled test position although there are test rows)."""
    from ..store.loader import keep_positions, row_units

    lo, hi, n = {False: np.inf, True: np.inf}, {False: -np.inf, True: -np.inf}, {False: 0, True: 0}
    for unit in row_units(store, rows_per_unit=4096):
        y = target.labels(store, unit)
        # integer labels: negative = none
        y = np.where(y >= 0, y, np.nan) if y.dtype.kind != "f" else y
        ok = keep_positions(store, unit, skip_bos, skip_padding=True) & ~np.isnan(y)
        test = np.broadcast_to(test_rows[unit][:, None], y.shape)
        for split in (False, True):
            v = y[ok & (test == split)]
            if len(v):
                n[split] += len(v)
                lo[split], hi[split] = min(lo[split], v.min()), max(hi[split], v.max())
    if n[False] < 2:
        raise ConfigError(
            f"Target '{target.name}' labels {n[False]} training position(s) (BOS and padding excluded); "
            "a probe needs at least 2. Label more positions, or pass more rows or a different split."
        )
    for split, rows in ((False, "training"), (True, "test")):
        if n[split] and lo[split] == hi[split]:
            raise ConfigError(
                f"Target '{target.name}' is {lo[split]:g} at every {rows} position, so R^2 is undefined "
                "there; pass a target that varies" + (", or another --seed." if split else ".")
            )
    _check_test(target, n[True], bool(test_rows.any()), "")


def _check_test(target: Target, n_test: int, has_test_rows: bool, which: str) -> None:
    if has_test_rows and not n_test:
        raise ConfigError(
            f"Target '{target.name}' labels no position of the test rows{' ' + which if which else ''}, "
            "so there is no test score; pass --test-frac 0 to fit on every row, or another --seed."
        )


def _total(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-block (values, counts) into sorted values and total counts."""
    values = np.concatenate([p[0] for p in parts]).astype(np.int64)
    u, inv = np.unique(values, return_inverse=True)
    return u, np.bincount(
        inv, weights=np.concatenate([p[1] for p in parts]), minlength=len(u)
    ).astype(np.int64)
