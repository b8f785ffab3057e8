"""Prompt pairs for the standard patching tasks, deterministic from a seed.

Each generator returns :class:`PromptPair`s (clean, corrupted, answer, wrong): the
clean and corrupted prompts have the same number of tokens, the answer and the wrong
answer are one token each (with their leading space), and every word that varies
between pairs is a single token, so all pairs of one call (one template) have the
same length and line up position by position. The metric is the logit difference
``answer - wrong`` at the last position (what ``actstore patch`` computes).

- ``ioi`` (Wang et al. 2022): the templates of the IOI paper (Fig. 14), names, places
  and objects of the authors' code, ABBA and BABA orders (half each, shuffled).
  Generators are prefix-stable: the first k of n pairs are the k pairs of the same seed.
  ``corruption='abc'`` (default, the paper's pABC distribution): the same sentence
  with three fresh distinct names; ``'flip'``: the second mention of the subject
  becomes the indirect object ("..., John gave" -> "..., Mary gave"), so the
  corrupted run should prefer the wrong answer. Answer = the indirect object,
  wrong = the subject.
- ``repeated-name``: "Michelle Jones was a top-notch student. Michelle" (answer
  " Jones") against "Michelle Smith was a top-notch student. Michelle" (wrong " Smith").
- ``greater-than`` (Hanna et al. 2023): "The war lasted from the year 1732 to the year
  17"; corrupted with the year XX01. Hanna et al. score the probability mass on years
  above YY minus that at or below it; here, for compatibility with the logit-difference
  metric, answer = YY+1 and wrong = YY-1 (two-digit tokens), which the clean prompt
  separates and the corrupted one (01) does not.
- ``factual``: facts from a JSON-lines file (:func:`factual_pairs`).

:func:`write_pairs` writes pairs in the ``actstore patch --pairs`` format.
"""

from __future__ import annotations

import difflib
import os
import random
from collections.abc import Sequence
from typing import Any

from ..corpus.vocab.tasks import GREATER_THAN_NOUNS, SURNAMES
from ..corpus.vocab.tasks import IOI_NAMES as NAMES
from ..corpus.vocab.tasks import IOI_OBJECTS as OBJECTS
from ..corpus.vocab.tasks import IOI_PLACES as PLACES
from ..errors import ConfigError
from ..jsonl import write_records
from .facts import FACTS_FORMAT, factual_pairs
from .prompts import (
    PromptPair,
    generate,
    need,
    single_token_words,
    template_index,
    token_ids,
    tokenizer_or_gpt2,
)

__all__ = [
    "PromptPair",
    "TASKS",
    "make_pairs",
    "ioi_pairs",
    "repeated_name_pairs",
    "greater_than_pairs",
    "factual_pairs",
    "write_pairs",
    "single_token_words",
    "IOI_TEMPLATES",
    "NAMES",
    "FACTS_FORMAT",
]


# --- templates (the word lists are in actstore.corpus.vocab) --------------------------------------

#: Wang et al. 2022, Fig. 14, in the BABA order ([B] = subject S, [A] = indirect object IO);
#: the final " [A]" is the answer, not part of the prompt. ABBA swaps the first [B] and [A].
IOI_TEMPLATES = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
)
REPEATED_NAME_TEMPLATES = (
    "{first} {last} was a top-notch student. {first}",
    "{first} {last} is a talented painter. {first}",
    "{first} {last} went to the market yesterday. {first}",
    "Yesterday {first} {last} won the race. {first}",
)
GREATER_THAN_TEMPLATE = "The {noun} lasted from the year {century}{yy:02d} to the year {century}"


# --- helpers -----------------------------------------------------------------------------------


def ioi_pairs(
    n: int,
    seed: int = 0,
    tokenizer: Any = None,
    *,
    template: int | None = 0,
    order: str = "mixed",
    corruption: str = "abc",
) -> list[PromptPair]:
    """Indirect object identification pairs (see the module docstring).

    Args:
        n: number of pairs. seed: the same seed gives the same pairs.
        tokenizer: default the bundled GPT-2 tokenizer.
        template: index into :data:`IOI_TEMPLATES` (all pairs of one call share it, so they
            have one length); None: a random template per pair (lengths then vary).
        order: 'ABBA', 'BABA' or 'mixed' (one of each in every two pairs, in a seeded order).
        corruption: 'abc' (three fresh names) or 'flip' (the second subject mention
            replaced by the indirect object).
    """
    tokenizer = tokenizer_or_gpt2(tokenizer)
    if order not in ("ABBA", "BABA", "mixed"):
        raise ConfigError(f"order must be 'ABBA', 'BABA' or 'mixed', got {order!r}.")
    if corruption not in ("abc", "flip"):
        raise ConfigError(
            f"corruption must be 'abc' (fresh names) or 'flip' (subject -> indirect object), "
            f"got {corruption!r}."
        )
    if template is not None and not 0 <= template < len(IOI_TEMPLATES):
        raise ConfigError(
            f"template must be in 0..{len(IOI_TEMPLATES) - 1} (IOI_TEMPLATES) or None, got {template}."
        )
    names = single_token_words(NAMES, tokenizer)
    places, objects = single_token_words(PLACES, tokenizer), single_token_words(OBJECTS, tokenizer)
    need(names, 5, "IOI names")
    need(places, 1, "places")
    need(objects, 1, "objects")
    orders: list[str] = [order] * n if order != "mixed" else []
    order_rng = random.Random(f"ioi-order:{seed}")
    # each two pairs: one ABBA, one BABA, in a seeded order (so the first k pairs
    while len(orders) < n:
        two = ["ABBA", "BABA"]  # are the same whatever n is)
        order_rng.shuffle(two)
        orders += two

    def fill(t: str, first: str, second: str, third: str, place: str, obj: str) -> str:
        body = (
            t[: -len(" [A]")]
            .replace("[B]", first, 1)
            .replace("[A]", second, 1)
            .replace("[B]", third)
        )
        return body.replace("[PLACE]", place).replace("[OBJECT]", obj)

    def make(rng: random.Random, i: int) -> PromptPair:
        t = template_index(template, len(IOI_TEMPLATES), rng)
        io, s, c1, c2, c3 = rng.sample(names, 5)
        place, obj = rng.choice(places), rng.choice(objects)
        first, second = (s, io) if orders[i] == "BABA" else (io, s)
        clean = fill(IOI_TEMPLATES[t], first, second, s, place, obj)
        if corruption == "abc":
            corrupted = fill(IOI_TEMPLATES[t], c1, c2, c3, place, obj)
        else:
            corrupted = fill(IOI_TEMPLATES[t], first, second, io, place, obj)
        meta = {
            "task": "ioi",
            "template": t,
            "order": orders[i],
            "corruption": corruption,
            "io": io,
            "s": s,
        }
        return PromptPair(clean, corrupted, " " + io, " " + s, meta)

    return generate(n, seed, tokenizer, make, "ioi")


def repeated_name_pairs(
    n: int, seed: int = 0, tokenizer: Any = None, *, template: int | None = 0
) -> list[PromptPair]:
    """ "Michelle Jones was a top-notch student. Michelle" (answer " Jones") against the
    same with another surname (wrong: that surname). ``template`` indexes
    :data:`REPEATED_NAME_TEMPLATES` (None: random per pair)."""
    tokenizer = tokenizer_or_gpt2(tokenizer)
    if template is not None and not 0 <= template < len(REPEATED_NAME_TEMPLATES):
        raise ConfigError(
            f"template must be in 0..{len(REPEATED_NAME_TEMPLATES) - 1} or None, got {template}."
        )
    # the first name also starts the prompt (no leading space there): one token both ways
    firsts = [
        w
        for w in single_token_words(NAMES, tokenizer)
        if w in single_token_words([w], tokenizer, prefix="")
    ]
    lasts = single_token_words(SURNAMES, tokenizer)
    need(firsts, 1, "first names")
    need(lasts, 2, "surnames")

    def make(rng: random.Random, i: int) -> PromptPair:
        t = template_index(template, len(REPEATED_NAME_TEMPLATES), rng)
        first = rng.choice(firsts)
        last, other = rng.sample(lasts, 2)
        fmt = REPEATED_NAME_TEMPLATES[t].format
        return PromptPair(
            fmt(first=first, last=last),
            fmt(first=first, last=other),
            " " + last,
            " " + other,
            {"task": "repeated-name", "template": t, "first": first},
        )

    return generate(n, seed, tokenizer, make, "repeated-name")


def _year_ok(tokenizer: Any, century: int, yy: int) -> bool:
    """' CCYY' is the two tokens ' CC' + 'YY', the latter also the token of 'YY' alone."""
    ids = token_ids(tokenizer, f" {century}{yy:02d}")
    return (
        len(ids) == 2
        and ids[1:] == token_ids(tokenizer, f"{yy:02d}")
        and ids[:1] == token_ids(tokenizer, f" {century}")
    )


def greater_than_pairs(
    n: int, seed: int = 0, tokenizer: Any = None, *, centuries: Sequence[int] = range(11, 18)
) -> list[PromptPair]:
    """ "The war lasted from the year 1732 to the year 17" against "... 1701 ...": answer
    "33" (YY+1), wrong "31" (YY-1). YY is drawn from 03..97, the noun from the nouns of
    Hanna et al. that are one token, the century from ``centuries`` (those whose years
    tokenise as ' CC' + 'YY')."""
    tokenizer = tokenizer_or_gpt2(tokenizer)
    nouns = single_token_words(GREATER_THAN_NOUNS, tokenizer)
    need(nouns, 1, "nouns")
    years = {
        c: [
            yy
            for yy in range(3, 98)
            if all(_year_ok(tokenizer, c, y) for y in (yy - 1, yy, yy + 1))
        ]
        for c in centuries
        if _year_ok(tokenizer, c, 1)
    }
    years = {c: ys for c, ys in years.items() if ys}
    if not years:
        raise ConfigError(
            f"No century of {list(centuries)} has years that tokenise as ' CC' + 'YY'; use a "
            "GPT-2-family tokenizer or other centuries."
        )

    def make(rng: random.Random, i: int) -> PromptPair:
        noun, century = rng.choice(nouns), rng.choice(sorted(years))
        yy = rng.choice(years[century])
        fmt = GREATER_THAN_TEMPLATE.format
        return PromptPair(
            fmt(noun=noun, century=century, yy=yy),
            fmt(noun=noun, century=century, yy=1),
            f"{yy + 1:02d}",
            f"{yy - 1:02d}",
            {"task": "greater-than", "century": century, "yy": yy},
        )

    return generate(n, seed, tokenizer, make, "greater-than")


# --- factual recall from a file ---------------------------------------------------------------

# --- by name -----------------------------------------------------------------------------------

#: task name -> what it is (the CLI's --task)
TASKS = {
    "ioi": "indirect object identification, Wang et al. templates, ABC corruption",
    "ioi-flip": "IOI with the subject's second mention flipped to the indirect object",
    "repeated-name": "'Michelle Jones was ... Michelle' -> ' Jones' vs another surname",
    "greater-than": "'The war lasted from the year 1732 to the year 17' vs ...1701 (Hanna et al.)",
    "factual": "facts from a JSON-lines file (--facts)",
}


def make_pairs(
    task: str,
    n: int | None = None,
    seed: int = 0,
    tokenizer: Any = None,
    facts: str | os.PathLike[str] | None = None,
) -> list[PromptPair]:
    """Pairs of a task by name (:data:`TASKS`); ``n`` defaults to 16 (factual: every fact)."""
    if task not in TASKS:
        close = difflib.get_close_matches(task, list(TASKS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"Unknown task {task!r}{hint}; expected one of {', '.join(TASKS)}.")
    if task == "factual":
        if facts is None:
            raise ConfigError(
                "The factual task reads facts from a file: pass --facts FILE (facts=...), "
                f"{FACTS_FORMAT}"
            )
        return factual_pairs(facts, n, seed, tokenizer)
    if facts is not None:
        raise ConfigError(f"--facts applies to the factual task only, not {task!r}; drop it.")
    n = 16 if n is None else n
    if task in ("ioi", "ioi-flip"):
        return ioi_pairs(n, seed, tokenizer, corruption="flip" if task == "ioi-flip" else "abc")
    if task == "repeated-name":
        return repeated_name_pairs(n, seed, tokenizer)
    return greater_than_pairs(n, seed, tokenizer)


def write_pairs(pairs: Sequence[PromptPair], path: str | os.PathLike[str]) -> str:
    """Write pairs as JSON lines in the ``actstore patch --pairs`` format (plus meta)."""
    return write_records(path, (p.to_json() for p in pairs))
