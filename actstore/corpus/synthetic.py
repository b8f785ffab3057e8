"""Built-in synthetic corpora. ``repeated-random:HALF_LEN[:SEED]``: each row is BOS,
then HALF_LEN uniformly random tokens (special tokens excluded), then the same
tokens again: the standard probe for induction heads (Olsson et al. 2022). Row r
is drawn from its own generator seeded with (SEED, r), so any row is computable
on its own and resumes seek for free."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorpusError

__all__ = [
    "RepeatedRandom",
    "parse_synthetic",
    "is_synthetic",
    "ordinary_tokens",
    "bos_id",
    "repeated_random_rows",
]

_RE = re.compile(r"^repeated-random:(\d+)(?::(\d+))?$")
_BLOCK = 64  # rows per yielded block


def ordinary_tokens(tokenizer: Any) -> np.ndarray:
    """int32: every token id of ``tokenizer`` but its special tokens, in order: what
    repeated random rows are drawn from."""
    special = set(tokenizer.all_special_ids)
    return np.array([t for t in range(len(tokenizer)) if t not in special], dtype=np.int32)


def bos_id(tokenizer: Any) -> int:
    """The token that starts a row: BOS, else end-of-text (GPT-2's tokenizer has both as one)."""
    return int(
        tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    )


def repeated_random_rows(
    rng: np.random.Generator, vocab: np.ndarray, bos: int, n_rows: int, half_len: int
) -> np.ndarray:
    """(n_rows, 2 * half_len + 1) of ``vocab``'s dtype: ``bos``, then half_len tokens drawn
    uniformly from ``vocab`` with ``rng``, then the same tokens again. The one generator of
    repeated random tokens (the synthetic corpus, the demo model's training batches)."""
    half = vocab[rng.integers(0, len(vocab), (n_rows, half_len))]
    return np.concatenate([np.full((n_rows, 1), bos, half.dtype), half, half], 1)


@dataclass(frozen=True)
class RepeatedRandom:
    half_len: int
    seed: int = 0

    @property
    def seq_len(self) -> int:
        return 2 * self.half_len + 1

    def rows(self, tokenizer: Any, start_row: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, tokens int32 (row, pos)) blocks from ``start_row`` on, forever."""
        vocab = ordinary_tokens(tokenizer)
        bos = bos_id(tokenizer)
        r = start_row
        while True:
            block = np.concatenate(
                [
                    repeated_random_rows(
                        np.random.default_rng([self.seed, r + i]), vocab, bos, 1, self.half_len
                    )
                    for i in range(_BLOCK)
                ]
            )
            yield r, block
            r += _BLOCK


def is_synthetic(source: Any) -> bool:
    return isinstance(source, str) and source.startswith("repeated-random")


def parse_synthetic(source: str, seq_len: int | None) -> RepeatedRandom:
    """The synthetic corpus ``source`` names; ``seq_len`` (None: not checked) must be its row length."""
    m = _RE.match(source)
    if not m:
        raise CorpusError(
            f"Cannot read synthetic corpus '{source}'; expected 'repeated-random:HALF_LEN' or "
            "'repeated-random:HALF_LEN:SEED', e.g. 'repeated-random:50'."
        )
    spec = RepeatedRandom(int(m.group(1)), int(m.group(2) or 0))
    if spec.half_len < 1:
        raise CorpusError(f"'{source}': HALF_LEN must be at least 1.")
    if seq_len is not None and seq_len != spec.seq_len:
        raise CorpusError(
            f"'{source}' makes rows of BOS + 2 x {spec.half_len} = {spec.seq_len} tokens; "
            f"pass --seq-len {spec.seq_len}, or leave --seq-len out."
        )
    return spec
