"""Reading the small JSON-lines files users hand to jobs (prompt pairs, facts): one
object per line, blank lines skipped, every problem named by file and line before
any work starts."""

from __future__ import annotations

import json
import os
from typing import Any

from .errors import CorpusError

__all__ = ["read_records"]


def read_records(path: str | os.PathLike[str], what: str, missing_fix: str, empty_fix: str,
                 expected: str) -> list[tuple[str, dict[str, Any]]]:
    """(``path:line``, object) for every non-blank line. ``what`` names the file
    ('Pairs', 'Facts'); the other arguments finish the error messages."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CorpusError(f"{what} file '{path}' not found. {missing_fix}")
    with open(path, encoding="utf-8") as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    if not lines:
        raise CorpusError(f"{what} file '{path}' holds no {what.lower()}; {empty_fix}")
    items = []
    for n, line in lines:
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{where} is not valid JSON ({e.msg}); write one JSON object per line.") from None
        if not isinstance(rec, dict):
            raise CorpusError(f"{where} is not a JSON object; expected {expected}.")
        items.append((where, rec))
    return items
