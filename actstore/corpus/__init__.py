"""Documents -> packed rows of token ids, deterministically: local files, hub datasets,
Python lists (records.py reads them, naming the file and line of a bad record; rows.py
packs them), their content fingerprints (fingerprint.py), and synthetic rows such as
repeated random tokens (synthetic.py);
the corpus plan, each shard's start in the source, so any process seeks straight to
its shards (plan.py)."""

from .plan import (
    PLAN_FIELDS,
    CorpusScan,
    count_rows,
    plan_checkpoint,
    scan,
    stop_after,
    synthetic_plan,
    unknown_plan,
)
from .rows import DEMO_CORPUS, Checkpoint, CorpusSpec, RowBlock, RowReader, iter_rows
from .synthetic import RepeatedRandom, is_synthetic, ordinary_tokens, parse_synthetic

__all__ = [
    "CorpusSpec",
    "RowBlock",
    "RowReader",
    "Checkpoint",
    "iter_rows",
    "count_rows",
    "DEMO_CORPUS",
    "RepeatedRandom",
    "parse_synthetic",
    "is_synthetic",
    "ordinary_tokens",
    "PLAN_FIELDS",
    "CorpusScan",
    "scan",
    "synthetic_plan",
    "unknown_plan",
    "plan_checkpoint",
    "stop_after",
]
