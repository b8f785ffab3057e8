"""Documents -> packed rows of token ids, deterministically.

Packing ("pack"): the documents' tokens form one stream, each document followed by
the end-of-text token; row r is BOS followed by the next ``seq_len - 1`` stream
items. Each token keeps the index of its source document and its position in it
(the separator after document d has doc d and doc_pos len(d); the BOS that starts a
row has doc -1 and doc_pos -1). Empty documents contribute nothing.

Per document ("document"): row r is BOS + the first ``seq_len - 1`` tokens of
document r, padded with the end-of-text token; ``mask`` marks real tokens (BOS
included); padding has doc -1 and doc_pos -1.

A row's content is a pure function of (corpus, tokenizer, seq_len, row index).
:class:`Checkpoint` names where row r starts in the source so that a reader skips to
it (plan.py computes one per shard): Python lists seek by document index, local files
by data part (``datasets``' shard of the stream: a file) and record inside it; with no
part known, by document index (``IterableDataset.skip`` still reads the skipped
records of a streamed file or hub dataset, but does not tokenise them). A reader
given ``stop`` tokenises no document from index ``stop`` on.

``ACTSTORE_COUNT_DOCS=<folder>`` (test instrumentation): every process appends the
number of documents of each tokenizer call to ``<folder>/<what>.<pid>`` (what: 'rows'
or 'plan').
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from ..errors import CorpusError, CorpusExhaustedError
from .fingerprint import file_sha256, hub_revision
from .records import BUILDERS, Checkpoint, documents
from .synthetic import is_synthetic, parse_synthetic

__all__ = ["CorpusSpec", "RowBlock", "RowReader", "Checkpoint", "iter_rows", "DEMO_CORPUS"]

_START = Checkpoint()  # the start of the source, the default of every reader (frozen)

DEMO_CORPUS = "actstore-demo"
_DOC_BATCH = 256  # documents per tokenizer call
_COUNT_DOCS = os.environ.get("ACTSTORE_COUNT_DOCS", "")


def _looks_like_file(name: str) -> bool:
    """Hub names look like 'org/name'; files have an extension we read, a glob, or
    start like a path."""
    return (
        os.path.splitext(name)[1].lower() in BUILDERS
        or glob.has_magic(name)
        or name.startswith((".", os.sep, "~"))
        or os.path.isfile(name)
    )


@dataclass(frozen=True)
class CorpusSpec:
    """Where the documents come from and how they become rows."""

    source: str | tuple[str, ...]  # hub dataset name, local file(s) or glob(s), or 'actstore-demo'
    split: str = "train"
    text_field: str = "text"
    config_name: str | None = None  # hub dataset configuration, e.g. 'wikitext-103-raw-v1'
    revision: str | None = None
    seq_len: int = 128
    packing: str = "pack"  # 'pack' | 'document'
    documents: tuple[str, ...] | None = field(default=None, repr=False)  # a Python list of strings

    @classmethod
    def from_dataset(cls, dataset: str | Sequence[str], **kw: Any) -> CorpusSpec:
        """A str is a hub name, a file, a glob or 'actstore-demo'; a list whose items
        all look like files (a known extension, a glob, or ./ / ~) is files; any
        other list is the documents themselves."""
        if isinstance(dataset, str):
            return cls(source=dataset, **kw)
        items = tuple(dataset)
        if not all(isinstance(x, str) for x in items):
            raise CorpusError("A Python list corpus must hold strings, one document each.")
        if items and all(_looks_like_file(x) for x in items):
            return cls(source=items, **kw)
        return cls(source="python-list", documents=items, **kw)

    @property
    def kind(self) -> str:
        if self.documents is not None:
            return "python-list"
        if self.source == DEMO_CORPUS:
            return "demo"
        if is_synthetic(self.source):
            return "synthetic"
        return "files" if self.files() else "hub"

    def files(self) -> list[str]:
        """Local files named by the source (empty for a hub name)."""
        if self.source == DEMO_CORPUS:
            return [str(resources.files("actstore") / "data" / "demo_corpus.jsonl")]
        if is_synthetic(self.source):
            return []
        names = (self.source,) if isinstance(self.source, str) else self.source
        found: list[str] = []
        for name in names:
            hits = sorted(glob.glob(os.path.expanduser(name)))
            if not hits and (isinstance(self.source, tuple) or _looks_like_file(name)):
                raise CorpusError(
                    f"Dataset file '{name}' not found. Pass existing .txt/.jsonl/.parquet/.csv files or a hub dataset name."
                )
            found += hits
        return found

    def describe(self) -> dict[str, Any]:
        """What the metadata records; equal descriptions give equal rows. Reads every
        local file once (its sha256) and asks the hub which commit a hub dataset is at
        (see fingerprint.py)."""
        d: dict[str, Any] = {
            "kind": self.kind,
            "split": self.split,
            "text_field": self.text_field,
            "config_name": self.config_name,
            "revision": self.revision,
            "seq_len": self.seq_len,
            "packing": self.packing,
        }
        if self.documents is not None:
            h = hashlib.sha256()
            for doc in self.documents:
                h.update(hashlib.sha256(doc.encode("utf-8", "surrogatepass")).digest())
            d["source"] = f"python list of {len(self.documents)} documents"
            d["sha256"] = h.hexdigest()
        elif self.kind in ("files", "demo"):
            names = [self.source] if isinstance(self.source, str) else list(self.source)
            d["source"] = (
                self.source
                if self.kind == "demo"
                else [os.path.abspath(os.path.expanduser(n)) for n in names]
            )
            d["files"] = [
                {"path": os.path.abspath(f), "bytes": os.path.getsize(f), "sha256": file_sha256(f)}
                for f in self.files()
            ]
            if self.kind == "demo":
                d["files"] = [{**d["files"][0], "path": "actstore/data/demo_corpus.jsonl"}]
        else:
            d["source"] = self.source
            if self.kind == "hub":
                d["resolved_revision"] = hub_revision(str(self.source), self.revision)
        return d


@dataclass
class RowBlock:
    """Consecutive rows starting at ``start``."""

    start: int
    tokens: np.ndarray  # int32 (row, pos)
    doc: np.ndarray  # int64 (row, pos)
    doc_pos: np.ndarray  # int32 (row, pos)
    mask: np.ndarray | None = None  # bool (row, pos), document mode only

    def __len__(self) -> int:
        return len(self.tokens)

    def slice(self, a: int, b: int) -> RowBlock:
        return RowBlock(
            self.start + a,
            self.tokens[a:b],
            self.doc[a:b],
            self.doc_pos[a:b],
            None if self.mask is None else self.mask[a:b],
        )

    @staticmethod
    def concat(blocks: Sequence[RowBlock]) -> RowBlock:
        cat = np.concatenate
        masks = [b.mask for b in blocks]
        return RowBlock(
            blocks[0].start,
            cat([b.tokens for b in blocks]),
            cat([b.doc for b in blocks]),
            cat([b.doc_pos for b in blocks]),
            None if masks[0] is None else cat(masks),  # type: ignore[arg-type]  # all or none
        )


def tokenized_documents(
    spec: CorpusSpec, tokenizer: Any, start: Checkpoint, stop: int | None = None, what: str = "rows"
) -> Iterator[tuple[int, int, list[int]]]:
    """(document index, part, token ids), tokenised ``_DOC_BATCH`` documents at a time."""
    batch: list[tuple[int, int, str]] = []
    for item in documents(spec, start, stop):
        batch.append(item)
        if len(batch) == _DOC_BATCH:
            yield from _tokenize_batch(tokenizer, batch, what)
            batch = []
    if batch:
        yield from _tokenize_batch(tokenizer, batch, what)


def _tokenize_batch(
    tokenizer: Any, batch: list[tuple[int, int, str]], what: str
) -> Iterator[tuple[int, int, list[int]]]:
    if _COUNT_DOCS:
        with open(os.path.join(_COUNT_DOCS, f"{what}.{os.getpid()}"), "a") as f:
            f.write(f"{len(batch)}\n")
    ids = tokenizer([t for _, _, t in batch], add_special_tokens=False)["input_ids"]
    yield from ((i, p, x) for (i, p, _), x in zip(batch, ids))


def _special(tokenizer: Any) -> tuple[int, int]:
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else bos
    if bos is None:
        raise CorpusError(
            "The tokenizer has neither a BOS nor an end-of-text token; rows cannot start with BOS."
        )
    return int(bos), int(eos)


def _packed(
    spec: CorpusSpec, tokenizer: Any, start: Checkpoint, stop: int | None
) -> Iterator[RowBlock]:
    bos, eos = _special(tokenizer)
    width = spec.seq_len - 1  # stream items per row after the BOS
    carry: list[np.ndarray] = [np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int32)]
    row = start.row
    pending: list[list[np.ndarray]] = []
    n_pending = 0

    def flush(final: bool) -> Iterator[RowBlock]:
        nonlocal carry, row, pending, n_pending
        if not pending:
            return
        parts: list[np.ndarray] = [
            np.concatenate([c] + [p[j] for p in pending]) for j, c in enumerate(carry)
        ]
        pending, n_pending = [], 0
        k = len(parts[0]) // width
        carry = [p[k * width :] for p in parts]
        if k:
            rows = [p[: k * width].reshape(k, width) for p in parts]
            head = [
                np.full((k, 1), v, dt)
                for v, dt in ((bos, np.int32), (-1, np.int64), (-1, np.int32))
            ]
            yield RowBlock(row, *(np.concatenate([h, r], axis=1) for h, r in zip(head, rows)))
            row += k

    first = True
    for d, _, ids in tokenized_documents(spec, tokenizer, start, stop):
        n = len(ids)
        if n == 0:
            first = False
            continue
        items: tuple[np.ndarray, ...] = (
            np.append(np.asarray(ids, np.int32), np.int32(eos)),
            np.full(n + 1, d, np.int64),
            np.arange(n + 1, dtype=np.int32),
        )
        if first and d == start.doc and start.item:
            items = tuple(a[start.item :] for a in items)
        first = False
        pending.append(list(items))
        n_pending += len(items[0])
        if n_pending >= 64 * width:
            yield from flush(False)
    yield from flush(True)


def _per_document(
    spec: CorpusSpec, tokenizer: Any, start: Checkpoint, stop: int | None
) -> Iterator[RowBlock]:
    bos, eos = _special(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    L = spec.seq_len
    for d, _, ids in tokenized_documents(
        spec, tokenizer, dataclasses.replace(start, doc=start.row), stop
    ):
        ids = ids[: L - 1]
        n = len(ids) + 1
        tokens = np.full((1, L), pad, np.int32)
        tokens[0, 0], tokens[0, 1:n] = bos, ids
        doc = np.full((1, L), -1, np.int64)
        doc[0, 1:n] = d
        doc_pos = np.full((1, L), -1, np.int32)
        doc_pos[0, 1:n] = np.arange(n - 1)
        mask = np.zeros((1, L), bool)
        mask[0, :n] = True
        yield RowBlock(d, tokens, doc, doc_pos, mask)


def _synthetic(spec: CorpusSpec, tokenizer: Any, start: Checkpoint) -> Iterator[RowBlock]:
    gen = parse_synthetic(str(spec.source), spec.seq_len)
    pos = np.concatenate([[-1], np.arange(2 * gen.half_len)]).astype(np.int32)
    for r, tokens in gen.rows(tokenizer, start.row):
        rows = np.arange(r, r + len(tokens), dtype=np.int64)[:, None]
        doc = np.where(pos[None, :] < 0, -1, rows).astype(np.int64)  # one document per row
        yield RowBlock(r, tokens, doc, np.broadcast_to(pos, tokens.shape).copy())


def iter_rows(
    spec: CorpusSpec, tokenizer: Any, start: Checkpoint = _START, stop: int | None = None
) -> Iterator[RowBlock]:
    """Blocks of consecutive rows from ``start.row`` on, until the corpus ends or
    (``stop``) before document ``stop``: only rows whose tokens all come before it."""
    if spec.kind == "synthetic":
        return _synthetic(spec, tokenizer, start)
    if spec.packing == "pack":
        return _packed(spec, tokenizer, start, stop)
    if spec.packing == "document":
        return _per_document(spec, tokenizer, start, stop)
    raise CorpusError(f"Unknown packing '{spec.packing}'; expected 'pack' or 'document'.")


class RowReader:
    """Hands out exact numbers of rows from :func:`iter_rows`."""

    def __init__(
        self, spec: CorpusSpec, tokenizer: Any, start: Checkpoint = _START, stop: int | None = None
    ):
        self._blocks = iter_rows(spec, tokenizer, start, stop)
        self._buf: list[RowBlock] = []
        self._n = 0
        self.next_row = start.row

    def take(self, n: int) -> RowBlock:
        while self._n < n:
            block = next(self._blocks, None)
            if block is None:
                raise CorpusExhaustedError(
                    f"The corpus ran out at row {self.next_row + self._n}, before the {n} rows asked for from row "
                    f"{self.next_row}; pass a smaller --n-rows / --n-tokens or a larger corpus."
                )
            self._buf.append(block)
            self._n += len(block)
        whole = RowBlock.concat(self._buf) if len(self._buf) > 1 else self._buf[0]
        out, rest = whole.slice(0, n), whole.slice(n, len(whole))
        self._buf, self._n = ([rest] if len(rest) else []), len(rest)
        self.next_row += n
        return out
