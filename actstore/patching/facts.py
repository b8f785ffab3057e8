"""The factual task: facts from a JSON-lines file, each paired with a corrupted prompt of
the same token length (given, or another fact's), answers one token each."""

from __future__ import annotations

import difflib
import os
import random
from typing import Any

from ..errors import ConfigError, CorpusError
from ..jsonl import read_records
from .prompts import PromptPair, token_ids, tokenizer_or_gpt2

__all__ = ["factual_pairs", "FACTS_FORMAT"]

_FACT_FIELDS = ("prompt", "answer", "corrupted_prompt", "wrong")
_FACT_EXTRA = ("subject", "relation", "id", "meta")  # kept in PromptPair.meta
FACTS_FORMAT = """one JSON object per line:
  {"prompt": "The Kremlin is in the city of", "answer": " Moscow"}
  {"prompt": "The Vatican is in the city of", "answer": " Rome"}
  {"prompt": "The capital of Japan is", "answer": " Tokyo", "corrupted_prompt": "The capital of France is", "wrong": " Paris"}
'answer' and 'wrong' are one token each (mind the leading space). A fact with 'corrupted_prompt'
(same token length as 'prompt') also needs 'wrong', the corrupted prompt's answer; a fact
without one is paired with another fact of the same token length and a different answer
(its prompt becomes the corrupted prompt, its answer the wrong one). Optional: subject,
relation, id, meta."""


def factual_pairs(
    path: str | os.PathLike[str], n: int | None = None, seed: int = 0, tokenizer: Any = None
) -> list[PromptPair]:
    """Factual-recall pairs from a JSON-lines file (format: :data:`FACTS_FORMAT`),
    validated before anything runs (every error names the line and the fix).

    ``n``: use n facts, a seeded sample kept in file order (default: all). Facts
    without a corrupted prompt are paired within their token length, in a seeded order.
    Pairs of different facts may have different lengths."""
    tokenizer = tokenizer_or_gpt2(tokenizer)
    path = os.fspath(path)
    facts: list[tuple[str, dict[str, Any], list[int]]] = []
    records = read_records(
        path,
        "Facts",
        f"Pass a JSON-lines file of facts to --facts; {FACTS_FORMAT}",
        FACTS_FORMAT,
        '{"prompt": ..., "answer": ...}',
    )
    for where, rec in records:
        for key in rec:
            if key not in _FACT_FIELDS + _FACT_EXTRA:
                close = difflib.get_close_matches(key, _FACT_FIELDS + _FACT_EXTRA, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise CorpusError(
                    f"{where}: unknown field {key!r}{hint}; a fact has prompt, answer and optionally "
                    "corrupted_prompt and wrong (and subject, relation, id, meta)."
                )
        for key in ("prompt", "answer"):
            if key not in rec:
                raise CorpusError(f"{where} has no field {key!r}; {FACTS_FORMAT}")
        if "corrupted_prompt" in rec and "wrong" not in rec:
            raise CorpusError(
                f"{where} has a corrupted_prompt but no 'wrong': add the answer the corrupted prompt "
                "leads to (one token), which the logit difference compares against."
            )
        if "wrong" in rec and "corrupted_prompt" not in rec:
            raise CorpusError(
                f"{where} has 'wrong' but no corrupted_prompt: add the corrupted prompt, or drop "
                "'wrong' to pair the fact with another fact of the same length."
            )
        for key in _FACT_FIELDS:
            if key in rec and not isinstance(rec[key], str):
                raise CorpusError(
                    f"{where}: {key} must be a string, got {type(rec[key]).__name__}."
                )
        for key in ("answer", "wrong"):
            if key in rec:
                tok = token_ids(tokenizer, rec[key])
                if len(tok) != 1:
                    pieces = [tokenizer.decode([t]) for t in tok]
                    raise ConfigError(
                        f"{where}: {key} {rec[key]!r} is {len(tok)} tokens {pieces}; the logit "
                        "difference needs one-token answers. Pick a one-token word (mind the leading "
                        "space: ' Paris' is one token)."
                    )
        if rec.get("wrong") is not None and token_ids(tokenizer, rec["wrong"]) == token_ids(
            tokenizer, rec["answer"]
        ):
            raise ConfigError(
                f"{where}: answer and wrong are the same token {rec['answer']!r}; the logit difference "
                "would be 0. Give the corrupted prompt's own answer as 'wrong'."
            )
        ids = token_ids(tokenizer, rec["prompt"])
        if "corrupted_prompt" in rec and len(token_ids(tokenizer, rec["corrupted_prompt"])) != len(
            ids
        ):
            raise ConfigError(
                f"{where}: the prompt is {len(ids)} tokens and the corrupted_prompt "
                f"{len(token_ids(tokenizer, rec['corrupted_prompt']))}; patching compares them position by "
                "position. Reword the corrupted prompt to the same token length."
            )
        facts.append((where, rec, ids))
    if n is not None:
        if not 1 <= n <= len(facts):
            raise ConfigError(
                f"n_pairs {n} is outside 1..{len(facts)} (the facts in '{path}'); pass at most "
                f"{len(facts)}, or omit it to use every fact."
            )
        keep = sorted(random.Random(f"factual:{seed}").sample(range(len(facts)), n))
        facts = [facts[i] for i in keep]
    return _pair_facts(facts, seed, tokenizer)


def _pair_facts(
    facts: list[tuple[str, dict[str, Any], list[int]]], seed: int, tokenizer: Any
) -> list[PromptPair]:
    """Facts without a corrupted prompt get a partner: the next fact of the same token
    length with a different answer, in a seeded cyclic order."""
    groups: dict[int, list[int]] = {}
    for i, (_, rec, ids) in enumerate(facts):
        if "corrupted_prompt" not in rec:
            groups.setdefault(len(ids), []).append(i)
    partner: dict[int, int] = {}
    rng = random.Random(f"factual-pairing:{seed}")
    for length, members in groups.items():
        cycle = list(members)
        rng.shuffle(cycle)
        for k, i in enumerate(cycle):
            answer = token_ids(tokenizer, facts[i][1]["answer"])
            j = next(
                (
                    cycle[(k + d) % len(cycle)]
                    for d in range(1, len(cycle))
                    if token_ids(tokenizer, facts[cycle[(k + d) % len(cycle)]][1]["answer"])
                    != answer
                ),
                None,
            )
            if j is None:
                raise ConfigError(
                    f"{facts[i][0]}: no other fact has a prompt of {length} tokens and a different "
                    'answer to pair it with; add "corrupted_prompt" and "wrong" to it, or more facts '
                    "of that length."
                )
            partner[i] = j
    pairs = []
    for i, (where, rec, _) in enumerate(facts):
        meta = {"task": "factual", "source": where, **{k: rec[k] for k in _FACT_EXTRA if k in rec}}
        if i in partner:
            other = facts[partner[i]]
            meta["paired_with"] = other[0]
            pairs.append(
                PromptPair(
                    rec["prompt"], other[1]["prompt"], rec["answer"], other[1]["answer"], meta
                )
            )
        else:
            pairs.append(
                PromptPair(
                    rec["prompt"], rec["corrupted_prompt"], rec["answer"], rec["wrong"], meta
                )
            )
    return pairs
