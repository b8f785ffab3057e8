"""The small JSON-lines files of jobs (prompt pairs, facts, demo documents): reading
them, one object per line, blank lines skipped, every problem named by file and line
before any work starts; and writing them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from .errors import CorpusError

__all__ = ["read_records", "write_records"]


def read_records(
    path: str | os.PathLike[str], what: str, missing_fix: str, empty_fix: str, expected: str
) -> list[tuple[str, dict[str, Any]]]:
    """(``path:line``, object) for every non-blank line. ``what`` names the file
    ('Pairs', 'Facts'); the other arguments finish the error messages."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CorpusError(f"{what} file '{path}' not found. {missing_fix}")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{what} file '{path}' is not UTF-8 text (byte {e.start}); save it as UTF-8 JSON lines."
        ) from None
    if not lines:
        raise CorpusError(f"{what} file '{path}' holds no {what.lower()}; {empty_fix}")
    items = []
    for n, line in lines:
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(
                f"{where} is not valid JSON ({e.msg}); write one JSON object per line."
            ) from None
        if not isinstance(rec, dict):
            raise CorpusError(f"{where} is not a JSON object; expected {expected}.")
        items.append((where, rec))
    return items


def write_records(path: str | os.PathLike[str], records: Iterable[dict[str, Any]]) -> str:
    """Write ``records`` one JSON object per line (UTF-8); returns the path."""
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return path
