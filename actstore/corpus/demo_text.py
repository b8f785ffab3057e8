"""The synthetic corpus behind the demo model, generated deterministically from a seed.

Plain English built from small closed word lists, so that every name, surname, object
and place is one token of the demo tokenizer (with its leading space), plus, for
training only, token-level segments of repeated random tokens:

- IOI-style sentences (Wang et al. 2022) in both orders: "When Mary and John went to the
  store, John gave a drink to Mary." (ABBA) and "When John and Mary went ..." (BABA);
- repeated-name sentences: "Michelle Jones was a top-notch student. ... Michelle Jones";
- plain sentences that put the same names, objects and places in other contexts;
- number sequences: "Counting: 12, 13, 14, 15.", "Counting by 2: 4, 6, 8.";
- repeated word lists: "Words: ball map key, ball map key.";
- rows of random tokens, each segment shown two or three times (induction heads).

Evaluation prompts (:func:`ioi_pairs`) use templates that never occur in the training
text (:data:`IOI_TEMPLATES_HELDOUT`; their words all do) and their own random stream.

    from actstore.corpus import demo_text as demo_data   # also actstore.demo.data
    docs = demo_data.documents(600, seed=0)       # list of str
    pairs = demo_data.ioi_pairs(32, template=0)   # [{"clean", "corrupted", "answer", "wrong"}, ...]
    rows = demo_data.text_rows(tokenizer, n_rows=64, seq_len=128, seed=0)  # int64 (row, pos)

    python -m actstore.demo.data ioi-pairs pairs.jsonl --n 32   # a pairs file for `actstore patch`
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..jsonl import write_records
from .synthetic import bos_id, ordinary_tokens, repeated_random_rows
from .vocab.demo import DEMO_NAMES as NAMES
from .vocab.demo import DEMO_OBJECTS as OBJECTS
from .vocab.demo import DEMO_PLACES as PLACES
from .vocab.demo import DEMO_ROLES as ROLES
from .vocab.demo import DEMO_SURNAMES as SURNAMES

__all__ = [
    "NAMES",
    "SURNAMES",
    "OBJECTS",
    "PLACES",
    "ROLES",
    "IOI_OPENERS",
    "IOI_LINKS",
    "IOI_ACTIONS",
    "IOI_TRAIN",
    "IOI_HELDOUT",
    "IOI_TEMPLATES_HELDOUT",
    "RECIPE",
    "HELDOUT_SEED",
    "documents",
    "document",
    "ioi_pairs",
    "text_rows",
    "repeated_batch",
    "single_token_words",
    "write_documents",
]


# IOI-style sentences are an opener (both names), a link and an action (the subject again,
# then "to"); {a} is the indirect object (the answer), {b} the subject. A fifth of the
# opener x action combinations never occur in training: the evaluation prompts use them.
IOI_OPENERS = (
    "When {a} and {b} went to the {place}",
    "When {a} and {b} got a {obj} at the {place}",
    "After {a} and {b} went to the {place}",
    "While {a} and {b} were working at the {place}",
    "While {a} and {b} were walking to the {place}",
    "When {a} and {b} met at the {place}",
    "After the lunch, {a} and {b} went to the {place}",
    "{a} and {b} had a lot of fun at the {place}",
    "{a} and {b} were at the {place}",
    "Friends {a} and {b} found a {obj} at the {place}",
    "Then, {a} and {b} had a long argument at the {place}",
    "The {place} that {a} and {b} went to was closed",
    "Yesterday {a} and {b} arrived at the {place}",
    "{a} and {b} went to the {place} together",
)
IOI_LINKS = (", ", ". ", ", and ", ", so ", ". Later, ", ". Then ")
IOI_ACTIONS = (
    "{b} gave a {obj} to",
    "{b} gave the {obj} to",
    "{b} handed a {obj} to",
    "{b} passed the {obj} to",
    "{b} sent a {obj} to",
    "{b} threw the {obj} to",
    "{b} showed the {obj} to",
    "{b} brought a {obj} to",
    "{b} decided to give it to",
    "{b} said hello to",
    "{b} gave it to",
    "{b} lent the {obj} to",
)
IOI_HELDOUT = tuple(
    (i, j) for i in range(len(IOI_OPENERS)) for j in range(len(IOI_ACTIONS)) if (i + 2 * j) % 5 == 0
)
IOI_TRAIN = tuple(
    (i, j) for i in range(len(IOI_OPENERS)) for j in range(len(IOI_ACTIONS)) if (i + 2 * j) % 5 != 0
)
# one template per held-out combination, with the link ", ": all prompts of one template have one length
IOI_TEMPLATES_HELDOUT = tuple(f"{IOI_OPENERS[i]}, {IOI_ACTIONS[j]}" for i, j in IOI_HELDOUT)
PLAIN_TEMPLATES = (
    "{a} likes the {obj}.",
    "{a} went to the {place} with {b}.",
    "{a} handed the {obj} to {b} at the {place}.",
    "{a} passed the {obj} to {b}.",
    "{a} threw the {obj} into the {place}.",
    "{a} sent a {obj} to the {place}.",
    "{a} met {b} at the {place} after the lunch.",
    "{a} was walking to the {place} with a {obj}.",
    "At the {place}, {a} found a {obj} and kept it.",
    "{a} and {b} were at the {place}.",
)
REPEATED_NAME_TEMPLATES = (
    "{n} {s} was a top-notch {role}. {n} {s} lived near the {place}, and everyone liked {n} {s}.",
    "{n} {s} lived near the {place}. Every day, {n} {s} walked to the {place} with a {obj}.",
    "Yesterday {n} {s} found a {obj}. Today {n} {s} gave the {obj} to {m}.",
    "The {role} {n} {s} met {m} at the {place}. Later, {n} {s} said hello to {m} again.",
)

HELDOUT_SEED = 10_000_019  # the evaluation stream; training uses small seeds
# sentence kind -> weight
RECIPE = {
    "ioi": 0.45,
    "repeated_name": 0.15,
    "plain": 0.1,
    "counting": 0.15,
    "words": 0.15,
}


def _ioi(
    rng: random.Random, combos: Sequence[tuple[int, int]] | None, template: str | None = None
) -> tuple[str, str, str]:
    """(prompt, IO, S), ABBA or BABA with equal probability: from ``template`` when
    given, else from an opener x action combination of ``combos`` and a random link."""
    io, s = rng.sample(NAMES, 2)
    if template is None:
        assert combos is not None, "_ioi needs combos or a template"
        i, j = rng.choice(combos)
        template = IOI_OPENERS[i] + rng.choice(IOI_LINKS) + IOI_ACTIONS[j]
    text = template.format(a=io, b=s, place=rng.choice(PLACES), obj=rng.choice(OBJECTS))
    if rng.random() < 0.5:  # BABA: the subject is named first
        head, _, tail = text.partition(f"{io} and {s}")
        text = f"{head}{s} and {io}{tail}"
    return text, io, s


def _sentence(rng: random.Random, kind: str) -> str:
    if kind == "ioi":
        text, io, _ = _ioi(rng, IOI_TRAIN)
        return f"{text} {io}."
    if kind == "repeated_name":
        n, m = rng.sample(NAMES, 2)
        return rng.choice(REPEATED_NAME_TEMPLATES).format(
            n=n,
            s=rng.choice(SURNAMES),
            m=m,
            role=rng.choice(ROLES),
            place=rng.choice(PLACES),
            obj=rng.choice(OBJECTS),
        )
    if kind == "plain":
        a, b = rng.sample(NAMES, 2)
        return rng.choice(PLAIN_TEMPLATES).format(
            a=a, b=b, place=rng.choice(PLACES), obj=rng.choice(OBJECTS)
        )
    if kind == "counting":
        step = rng.choice((1, 1, 1, 2))
        start = rng.randint(0, 150)
        seq = ", ".join(str(start + step * i) for i in range(rng.randint(4, 12)))
        return f"Counting{' by 2' if step == 2 else ''}: {seq}."
    if kind == "words":
        words = rng.sample(OBJECTS + PLACES + NAMES, rng.randint(3, 8))
        return f"Words: {' '.join(words)}, {' '.join(words)}."
    raise ValueError(f"unknown sentence kind {kind!r}")


def document(rng: random.Random) -> str:
    """2-8 sentences whose kinds are drawn with the weights of RECIPE."""
    kinds, weights = list(RECIPE), list(RECIPE.values())
    return " ".join(_sentence(rng, k) for k in rng.choices(kinds, weights, k=rng.randint(2, 8)))


def documents(n: int, seed: int = 0) -> list[str]:
    """``n`` documents: the same (n, seed) always gives the same list, and a longer
    list starts with the shorter one."""
    rng = random.Random(seed)
    return [document(rng) for _ in range(n)]


def ioi_pairs(
    n: int, seed: int = HELDOUT_SEED, template: int | None = None
) -> list[dict[str, str]]:
    """``n`` IOI prompt pairs in `actstore patch`'s format, from the held-out opener x
    action combinations. The clean prompt stops before the indirect object (answer
    ' IO', wrong ' S'); the corrupted one names IO where the clean one repeats S, so
    both have the same length and the right answer swaps. ``template`` pins one of
    IOI_TEMPLATES_HELDOUT (one length for all pairs, as one patching sweep needs);
    by default combinations and links vary."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        clean, io, s = _ioi(
            rng, IOI_HELDOUT, None if template is None else IOI_TEMPLATES_HELDOUT[template]
        )
        last = list(re.finditer(rf"\b{s}\b", clean))[-1]  # the second mention of S
        corrupted = clean[: last.start()] + io + clean[last.end() :]
        out.append({"clean": clean, "corrupted": corrupted, "answer": " " + io, "wrong": " " + s})
    return out


def single_token_words() -> list[str]:
    """Words the demo tokenizer holds as one token each, with their leading space."""
    return [" " + w for w in NAMES + SURNAMES + OBJECTS + PLACES]


def _text_stream(tokenizer: Any, seed: int) -> Iterator[int]:
    """Token ids of documents(seed=seed), each followed by end-of-text, forever."""
    rng = random.Random(seed)
    eot = tokenizer.eos_token_id
    while True:
        for ids in tokenizer([document(rng) for _ in range(256)], add_special_tokens=False)[
            "input_ids"
        ]:
            yield from ids
            yield eot


def text_rows(tokenizer: Any, n_rows: int, seq_len: int = 128, seed: int = 0) -> np.ndarray:
    """int64 (row, pos): the text of ``documents(seed=seed)``, each document followed by
    end-of-text, cut into rows of BOS + seq_len - 1 tokens (actstore's 'pack' mode)."""
    text = _text_stream(tokenizer, seed)
    out = np.empty((n_rows, seq_len), np.int64)
    out[:, 0] = tokenizer.bos_token_id
    for r in range(n_rows):
        out[r, 1:] = [next(text) for _ in range(seq_len - 1)]
    return out


def repeated_batch(
    tokenizer: Any, rng: np.random.Generator, n_rows: int, half_len: int
) -> np.ndarray:
    """int64 (row, 2 * half_len + 1): BOS, half_len uniformly random non-special tokens,
    the same again; the rows of ``--dataset repeated-random``, drawn from ``rng``."""
    return repeated_random_rows(
        rng, ordinary_tokens(tokenizer).astype(np.int64), bos_id(tokenizer), n_rows, half_len
    )


def write_documents(path: str, n: int, seed: int) -> None:
    """``documents(n, seed)`` as JSON lines {"id", "text"}: the bundled corpus's format."""
    write_records(path, ({"id": i, "text": text} for i, text in enumerate(documents(n, seed))))
