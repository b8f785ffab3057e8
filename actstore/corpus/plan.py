"""The corpus plan: where each shard's first row starts in the source, computed once.

One pass over the corpus (:func:`scan`, the pass that also counts its rows)
tokenises every document up to the last row asked for (by tokenizer calls of 256
documents) and keeps where each starts in the packed stream (8 bytes a document, on
the one process that scans) and the document index where each data part (local
file) starts. From that, :meth:`CorpusScan.checkpoint` names the start of any row, so a process seeks
straight to its shards instead of tokenising the corpus up to them. Synthetic rows
need no pass (row r is computed on its own); a hub dataset is streamed, and is not
scanned: its plan is unknown past row 0 (:func:`unknown_plan`) and its readers read
sequentially from the first row to do.

The plan is an int64 array (boundary, field): one boundary per shard start plus the
end of the last row, fields :data:`PLAN_FIELDS`; -1 marks what is unknown.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import EmptyCorpusError
from .rows import Checkpoint, CorpusSpec, tokenized_documents

__all__ = [
    "PLAN_FIELDS",
    "CorpusScan",
    "scan",
    "count_rows",
    "synthetic_plan",
    "unknown_plan",
    "plan_checkpoint",
    "stop_after",
]

PLAN_FIELDS = ("row", "doc", "item", "part", "record")


@dataclass(frozen=True)
class CorpusScan:
    """What one pass over the corpus learnt: its rows (up to the limit), where each
    document starts in the packed stream, and the document index where each data
    part starts (empty for sources without parts)."""

    spec: CorpusSpec
    n_rows: int
    # int64 (document + 1,): stream item where each document starts; then the end
    starts: np.ndarray
    part_starts: np.ndarray  # int64 (part,)

    @property
    def n_docs(self) -> int:
        """The documents the pass read."""
        return len(self.starts) - 1

    def checkpoint(self, row: int) -> Checkpoint:
        """Where row ``row`` (0..n_rows; n_rows: the end of the last row) starts."""
        if not 0 <= row <= self.n_rows:
            raise ValueError(f"row {row} is outside 0..{self.n_rows}")
        if self.spec.packing == "document":
            doc, item = row, 0
        else:
            p = row * (self.spec.seq_len - 1)
            # the last document starting at or before p
            doc = int(np.searchsorted(self.starts, p, side="right")) - 1
            item = p - int(self.starts[doc])
        part, record = -1, -1
        if doc < self.n_docs:  # a document the pass read: its part is known
            if self.spec.documents is not None:
                part, record = 0, doc
            elif len(self.part_starts):
                part = int(np.searchsorted(self.part_starts, doc, side="right")) - 1
                record = doc - int(self.part_starts[part])
        return Checkpoint(row=row, doc=doc, item=item, part=part, record=record)

    def plan(self, boundaries: Sequence[int]) -> np.ndarray:
        """The plan array for these boundary rows (shard starts, then n_rows)."""
        return _array([self.checkpoint(r) for r in boundaries])


def scan(spec: CorpusSpec, tokenizer: Any, limit: int | None = None) -> CorpusScan:
    """Read and tokenise the corpus once, up to ``limit`` rows (None: all of it).
    Raises EmptyCorpusError when it yields no row."""
    width = spec.seq_len - 1
    starts, part_starts = array("q", [0]), array("q")
    total, n_rows, part = 0, 0, -1
    for d, p, ids in tokenized_documents(spec, tokenizer, Checkpoint(), what="plan"):
        while p > part:  # parts without records start where the next one does
            part += 1
            part_starts.append(d)
        n = len(ids)
        total += n + 1 if n else 0
        starts.append(total)
        n_rows = total // width if spec.packing == "pack" else d + 1
        # stop past the limit's last item, so that the document holding the end is read
        if limit is not None and (n_rows > limit or (n_rows == limit and total > limit * width)):
            break
    if n_rows == 0:
        raise EmptyCorpusError(
            f"The corpus '{spec.describe()['source']}' yields no rows of {spec.seq_len} tokens "
            "(no documents, only empty ones, or fewer tokens than one row); pass a corpus with text or a smaller --seq-len."
        )
    n_rows = n_rows if limit is None else min(n_rows, limit)
    return CorpusScan(
        spec,
        n_rows,
        np.frombuffer(starts, np.int64).copy(),
        np.frombuffer(part_starts, np.int64).copy(),
    )


def count_rows(spec: CorpusSpec, tokenizer: Any, limit: int | None = None) -> int:
    """Rows the corpus yields, counting no further than ``limit``. Raises
    EmptyCorpusError when it yields none."""
    return scan(spec, tokenizer, limit).n_rows


def synthetic_plan(boundaries: Sequence[int]) -> np.ndarray:
    """Synthetic rows are computed on their own: row r is document r."""
    return _array([Checkpoint(row=r, doc=r) for r in boundaries])


def unknown_plan(boundaries: Sequence[int]) -> np.ndarray:
    """A streamed source not scanned: only row 0's start is known."""
    return _array(
        [Checkpoint() if r == 0 else Checkpoint(row=r, doc=-1, item=-1) for r in boundaries]
    )


def plan_checkpoint(plan: np.ndarray, k: int) -> Checkpoint | None:
    """Boundary k of a plan array, or None where its document is unknown."""
    row = plan[k]
    return None if row[1] < 0 else Checkpoint(*(int(v) for v in row))


def stop_after(end: Checkpoint) -> int:
    """The first document a reader that stops at ``end`` need not tokenise."""
    return end.doc + (1 if end.item else 0)


def _array(points: Sequence[Checkpoint]) -> np.ndarray:
    return np.array([[getattr(c, f) for f in PLAN_FIELDS] for c in points], dtype=np.int64).reshape(
        -1, len(PLAN_FIELDS)
    )
