"""A prompt pair and what every task generator shares: the tokenizer, token ids,
single-token word lists, seeded generation that is prefix-stable."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = ["PromptPair", "single_token_words"]


@dataclass(frozen=True)
class PromptPair:
    """One clean/corrupted pair; ``meta`` says how it was made (template, names, ...)."""

    clean: str
    corrupted: str
    answer: str
    wrong: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "corrupted": self.corrupted,
            "answer": self.answer,
            "wrong": self.wrong,
            **({"meta": self.meta} if self.meta else {}),
        }


def tokenizer_or_gpt2(tokenizer: Any) -> Any:
    if tokenizer is None:
        from ..resources import gpt2_tokenizer

        return gpt2_tokenizer()
    return tokenizer


def token_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def single_token_words(words: Sequence[str], tokenizer: Any, prefix: str = " ") -> list[str]:
    """The words that are one token with ``prefix`` (a leading space) before them."""
    return [w for w in words if len(token_ids(tokenizer, prefix + w)) == 1]


def need(words: Sequence[str], k: int, what: str) -> None:
    if len(words) < k:
        raise ConfigError(
            f"Only {len(words)} {what} are single tokens for this tokenizer; the task needs {k}. "
            "Use a GPT-2-family tokenizer."
        )


def generate(
    n: int, seed: int, tokenizer: Any, make: Callable[[random.Random, int], PromptPair], task: str
) -> list[PromptPair]:
    """n pairs from ``make(rng, i)``, each checked (equal token lengths, one-token answers)."""
    if n < 1:
        raise ConfigError(f"n (the number of pairs) must be at least 1, got {n}.")
    rng = random.Random(f"{task}:{seed}")
    pairs = []
    for i in range(n):
        pair = make(rng, i)
        a, b = token_ids(tokenizer, pair.clean), token_ids(tokenizer, pair.corrupted)
        if len(a) != len(b) or any(
            len(token_ids(tokenizer, w)) != 1 for w in (pair.answer, pair.wrong)
        ):
            raise ConfigError(
                f"{task}: pair {i} does not tokenise as the task assumes ({pair.clean!r} / "
                f"{pair.corrupted!r}, answers {pair.answer!r}, {pair.wrong!r}); use a GPT-2-family "
                "tokenizer."
            )
        pairs.append(pair)
    return pairs


def template_index(template: int | None, n_templates: int, rng: random.Random) -> int:
    return rng.randrange(n_templates) if template is None else template
