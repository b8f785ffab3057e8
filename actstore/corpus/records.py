"""A corpus's records -> its documents' texts, in order: Python lists, local files
(through ``datasets``' streaming builders, one data part per file) and hub datasets.

A record that cannot become a document is an error naming the file and line (or the
record), never a document silently dropped: a missing or null text field, a value
that is not text, a malformed JSON line, text that is not UTF-8.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import CorpusError, EmptyCorpusError, MissingTextFieldError

__all__ = ["BUILDERS", "Checkpoint", "documents", "open_dataset"]


class CorpusSpec(Protocol):
    """What reading records needs of a corpus spec (:class:`actstore.corpus.rows.CorpusSpec`)."""

    # read-only (properties): the spec is a frozen dataclass
    @property
    def source(self) -> str | tuple[str, ...]: ...
    @property
    def split(self) -> str: ...
    @property
    def text_field(self) -> str: ...
    @property
    def config_name(self) -> str | None: ...
    @property
    def revision(self) -> str | None: ...
    @property
    def documents(self) -> tuple[str, ...] | None: ...

    @property
    def kind(self) -> str: ...

    def files(self) -> list[str]: ...


@dataclass(frozen=True)
class Checkpoint:
    """Row ``row`` starts at stream item ``item`` of document ``doc`` (pack mode;
    item len(doc) is the document's separator). In document mode doc == row.
    ``part``/``record``: the data part (local file) holding document ``doc`` and
    its record index there; -1 where unknown (then the reader seeks by ``doc``)."""

    row: int = 0
    doc: int = 0
    item: int = 0
    part: int = -1
    record: int = -1


BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
DEFAULT_SPLIT = "train"  # the one split of local files and lists


def open_dataset(spec: CorpusSpec) -> Any:
    """The streamed dataset of a file or hub source."""
    import datasets

    try:
        files = spec.files()
        if files and all(os.path.getsize(f) == 0 for f in files):
            raise EmptyCorpusError(f"The dataset files {files} are empty; pass files with text.")
        if files:
            builders = {BUILDERS.get(os.path.splitext(f)[1].lower()) for f in files}
            if None in builders or len(builders) != 1:
                raise CorpusError(
                    f"Cannot read {files}: files must all be one of {', '.join(BUILDERS)}."
                )
            builder = builders.pop()
            # its error log would repeat the CorpusError that _decoded raises, naming the line
            logging.getLogger(f"datasets.packaged_modules.{builder}.{builder}").setLevel(
                logging.CRITICAL
            )
            return datasets.load_dataset(
                builder, data_files=files, split=DEFAULT_SPLIT, streaming=True
            )
        return datasets.load_dataset(
            spec.source, spec.config_name, split=spec.split, revision=spec.revision, streaming=True
        )
    except CorpusError:
        raise
    except Exception as e:
        raise CorpusError(
            f"Could not open dataset '{spec.source}' ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "Check the hub name, --split and --dataset-config, or pass local .txt/.jsonl/.parquet files."
        ) from e


def _records(spec: CorpusSpec, start: Checkpoint) -> Iterator[tuple[int, int, Any]]:
    """(part, record index in the part, record) from document ``start.doc`` on; part -1
    where parts are not followed (hub datasets, or a start whose part is unknown), and
    then the record index is the document index."""
    if spec.kind != "hub" and spec.split != DEFAULT_SPLIT:
        what = "A Python list" if spec.documents is not None else f"Local dataset '{spec.source}'"
        raise CorpusError(
            f"{what} has one split, so --split {spec.split} cannot be honoured (splits are for hub "
            f"datasets). Pass the {spec.split} documents themselves as --dataset, without --split."
        )
    if spec.documents is not None:
        for i, text in enumerate(spec.documents[start.doc :], start=start.doc):
            yield 0, i, {spec.text_field: text}
        return
    ds = open_dataset(spec)
    if spec.kind in ("files", "demo") and (start.part >= 0 or start.doc == 0):
        # the parts, in stream order (datasets: concatenated back, they are the stream)
        n = ds.num_shards
        for p in range(max(start.part, 0), n):
            part = ds.shard(n, p) if n > 1 else ds
            first = start.record if p == start.part and start.record > 0 else 0
            if first:
                part = part.skip(first)
            for r, rec in enumerate(part, start=first):
                yield p, r, rec
        return
    if start.doc:
        ds = ds.skip(start.doc)
    for i, rec in enumerate(ds, start=start.doc):
        yield -1, i, rec


def _json_line(path: str, record: int) -> int | None:
    """The line number (from 1) of record ``record`` of a JSON-lines file (blank lines
    hold no record), or None for other files."""
    if os.path.splitext(path)[1].lower() != ".jsonl":
        return None
    with open(path, "rb") as f:
        seen = -1
        for n, line in enumerate(f, start=1):
            seen += bool(line.strip())
            if seen == record:
                return n
    return None


def _where(spec: CorpusSpec, part: int, record: int) -> str:
    """'file F, line L' (or 'record R'), else 'document D' for sources without files."""
    if spec.kind in ("files", "demo") and part >= 0:
        path = spec.files()[part]
        line = _json_line(path, record)
        return f"file '{path}', " + (f"line {line}" if line is not None else f"record {record + 1}")
    return f"document {record} of '{spec.source}'"


def _first_bad_json_line(files: list[str]) -> str:
    """'file F, line L: why' of the first line of a JSON-lines file that is not JSON."""
    for path in files:
        if os.path.splitext(path)[1].lower() not in (".jsonl", ".json"):
            continue
        with open(path, "rb") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                except ValueError as e:
                    return f"file '{path}', line {n}: {getattr(e, 'msg', e)}"
    return ""


def _decoded(
    records: Iterator[tuple[int, int, Any]], spec: CorpusSpec
) -> Iterator[tuple[int, int, Any]]:
    try:
        yield from records
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"Dataset '{spec.source}' is not UTF-8 text ({e}); convert it first, e.g. "
            "`iconv -f latin1 -t utf-8 in.txt > out.txt`."
        ) from e
    except CorpusError:
        raise
    except Exception as e:  # pyarrow's ArrowInvalid (a malformed JSON line, CSV row or parquet file), datasets' errors
        files = spec.files() if spec.kind in ("files", "demo") else []
        bad = _first_bad_json_line(files)
        what = (
            f"{bad}" if bad else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        )
        raise CorpusError(
            f"Dataset '{spec.source}' cannot be read ({what}). Fix or remove that record "
            "(a .jsonl file holds one JSON object per line), or pass other files."
        ) from e


def documents(
    spec: CorpusSpec, start: Checkpoint, stop: int | None
) -> Iterator[tuple[int, int, str]]:
    """(document index, part, text) from ``start.doc`` to ``stop`` (exclusive; None: the end)."""
    for i, (part, record, rec) in enumerate(_decoded(_records(spec, start), spec), start=start.doc):
        if stop is not None and i >= stop:
            return
        if spec.text_field not in rec:
            raise MissingTextFieldError(
                f"Records have no field '{spec.text_field}' (fields: {', '.join(map(str, rec))}); "
                f"pass --text-field with one of them."
            )
        text = rec[spec.text_field]
        if not isinstance(text, str):
            found = (
                "no value (missing or null)"
                if text is None
                else f"a {type(text).__name__}, not text"
            )
            raise CorpusError(
                f"{_where(spec, part, record)}: field '{spec.text_field}' holds {found}. Every record needs text "
                f'there ("" for an empty document); fix that record, or pass --text-field naming a text field.'
            )
        yield i, part, text
