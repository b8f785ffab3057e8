"""Documents -> packed rows of token ids, deterministically: local files, hub datasets,
Python lists (rows.py) and synthetic rows such as repeated random tokens (synthetic.py)."""

from .rows import DEMO_CORPUS, Checkpoint, CorpusSpec, RowBlock, RowReader, count_rows, iter_rows
from .synthetic import RepeatedRandom, is_synthetic, ordinary_tokens, parse_synthetic

__all__ = ["CorpusSpec", "RowBlock", "RowReader", "Checkpoint", "iter_rows", "count_rows", "DEMO_CORPUS",
           "RepeatedRandom", "parse_synthetic", "is_synthetic", "ordinary_tokens"]
