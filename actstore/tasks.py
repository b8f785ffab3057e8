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
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from .errors import ConfigError, CorpusError
from .jsonl import read_records, write_records

__all__ = ["PromptPair", "TASKS", "make_pairs", "ioi_pairs", "repeated_name_pairs", "greater_than_pairs",
           "factual_pairs", "write_pairs", "IOI_TEMPLATES", "NAMES"]


@dataclass(frozen=True)
class PromptPair:
    """One clean/corrupted pair; ``meta`` says how it was made (template, names, ...)."""

    clean: str
    corrupted: str
    answer: str
    wrong: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"clean": self.clean, "corrupted": self.corrupted, "answer": self.answer, "wrong": self.wrong,
                **({"meta": self.meta} if self.meta else {})}


# --- word lists --------------------------------------------------------------------------------

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
#: the first names of the IOI authors' code (99)
NAMES = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda", "Daniel", "David",
    "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason", "Justin", "Sarah", "William",
    "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas", "Anthony", "Heather", "Eric", "Elizabeth", "Adam",
    "Megan", "Melissa", "Kevin", "Steven", "Thomas", "Timothy", "Christina", "Kyle", "Rachel", "Laura", "Lauren",
    "Amber", "Brittany", "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy", "Crystal", "Michelle", "Tiffany",
    "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca", "Jacob", "Stephen", "Patrick", "Sean",
    "Erin", "Jamie", "Kelly", "Samantha", "Nathan", "Sara", "Dustin", "Paul", "Angela", "Tyler", "Scott",
    "Katherine", "Andrea", "Gregory", "Erica", "Mary", "Travis", "Lisa", "Kenneth", "Bryan", "Lindsey", "Kristen",
    "Jose", "Alexander", "Jesse", "Katie", "Lindsay", "Shannon", "Vanessa", "Courtney", "Christine", "Alicia",
    "Cody", "Allison", "Bradley", "Samuel",
)
PLACES = ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
OBJECTS = ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")
SURNAMES = (
    "Smith", "Jones", "Brown", "Johnson", "Williams", "Miller", "Taylor", "Wilson", "Davis", "White", "Clark",
    "Hall", "Thomas", "Thompson", "Moore", "Hill", "Walker", "Anderson", "Wright", "Martin", "Wood", "Allen",
    "Robinson", "Lewis", "Scott", "Young", "Jackson", "Adams", "Baker", "Harris", "Lee", "King", "Green", "Evans",
    "Turner", "Cooper", "Hughes", "Ward", "Morris", "Edwards", "Collins", "Stewart", "Morgan", "Bell", "Murphy",
    "Bailey", "Cook", "Rogers", "Parker", "Carter", "Phillips", "Mitchell", "Campbell", "Roberts", "Nelson",
)
REPEATED_NAME_TEMPLATES = (
    "{first} {last} was a top-notch student. {first}",
    "{first} {last} is a talented painter. {first}",
    "{first} {last} went to the market yesterday. {first}",
    "Yesterday {first} {last} won the race. {first}",
)
#: nouns of Hanna et al. 2023 (those that are one GPT-2 token are used)
GREATER_THAN_NOUNS = (
    "abduction", "accord", "affair", "agreement", "appraisal", "assaults", "assessment", "attack", "attempts",
    "campaign", "captivity", "case", "challenge", "chaos", "clash", "collaboration", "coma", "competition",
    "confrontation", "consequence", "conspiracy", "construction", "consultation", "contact", "contract",
    "convention", "cooperation", "custody", "deal", "decline", "decrease", "demonstrations", "development",
    "disagreement", "disorder", "dispute", "domination", "dynasty", "effect", "effort", "employment", "endeavor",
    "engagement", "epidemic", "evaluation", "exchange", "existence", "expansion", "expedition", "experiments",
    "fall", "fame", "flights", "friendship", "growth", "hardship", "hostility", "illness", "impact",
    "imprisonment", "improvement", "incarceration", "increase", "insurgency", "invasion", "investigation",
    "journey", "kingdom", "marriage", "modernization", "negotiations", "notoriety", "obstruction", "operation",
    "order", "outbreak", "outcome", "overhaul", "patrols", "pilgrimage", "plague", "plan", "practice", "process",
    "program", "progress", "project", "pursuit", "quest", "raids", "reforms", "reign", "relationship",
    "retaliation", "riot", "rise", "rivalry", "romance", "rule", "sanctions", "shift", "siege", "slump",
    "stature", "stint", "strikes", "study", "test", "testing", "tests", "therapy", "tour", "tradition", "treaty",
    "trial", "trip", "unemployment", "voyage", "war", "warfare", "work",
)
GREATER_THAN_TEMPLATE = "The {noun} lasted from the year {century}{yy:02d} to the year {century}"


# --- helpers -----------------------------------------------------------------------------------


def _tokenizer(tokenizer: Any) -> Any:
    if tokenizer is None:
        from .resources import gpt2_tokenizer

        return gpt2_tokenizer()
    return tokenizer


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def single_token_words(words: Sequence[str], tokenizer: Any, prefix: str = " ") -> list[str]:
    """The words that are one token with ``prefix`` (a leading space) before them."""
    return [w for w in words if len(_ids(tokenizer, prefix + w)) == 1]


def _need(words: Sequence[str], k: int, what: str) -> None:
    if len(words) < k:
        raise ConfigError(f"Only {len(words)} {what} are single tokens for this tokenizer; the task needs {k}. "
                          "Use a GPT-2-family tokenizer.")


def _generate(n: int, seed: int, tokenizer: Any, make: Callable[[random.Random, int], PromptPair],
              task: str) -> list[PromptPair]:
    """n pairs from ``make(rng, i)``, each checked (equal token lengths, one-token answers)."""
    if n < 1:
        raise ConfigError(f"n (the number of pairs) must be at least 1, got {n}.")
    rng = random.Random(f"{task}:{seed}")
    pairs = []
    for i in range(n):
        pair = make(rng, i)
        a, b = _ids(tokenizer, pair.clean), _ids(tokenizer, pair.corrupted)
        if len(a) != len(b) or any(len(_ids(tokenizer, w)) != 1 for w in (pair.answer, pair.wrong)):
            raise ConfigError(f"{task}: pair {i} does not tokenise as the task assumes ({pair.clean!r} / "
                              f"{pair.corrupted!r}, answers {pair.answer!r}, {pair.wrong!r}); use a GPT-2-family "
                              "tokenizer.")
        pairs.append(pair)
    return pairs


def _template_index(template: Optional[int], n_templates: int, rng: random.Random) -> int:
    return rng.randrange(n_templates) if template is None else template


# --- the tasks ---------------------------------------------------------------------------------


def ioi_pairs(n: int, seed: int = 0, tokenizer: Any = None, *, template: Optional[int] = 0, order: str = "mixed",
              corruption: str = "abc") -> list[PromptPair]:
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
    tokenizer = _tokenizer(tokenizer)
    if order not in ("ABBA", "BABA", "mixed"):
        raise ConfigError(f"order must be 'ABBA', 'BABA' or 'mixed', got {order!r}.")
    if corruption not in ("abc", "flip"):
        raise ConfigError(f"corruption must be 'abc' (fresh names) or 'flip' (subject -> indirect object), "
                          f"got {corruption!r}.")
    if template is not None and not 0 <= template < len(IOI_TEMPLATES):
        raise ConfigError(f"template must be in 0..{len(IOI_TEMPLATES) - 1} (IOI_TEMPLATES) or None, got {template}.")
    names = single_token_words(NAMES, tokenizer)
    places, objects = single_token_words(PLACES, tokenizer), single_token_words(OBJECTS, tokenizer)
    _need(names, 5, "IOI names")
    _need(places, 1, "places")
    _need(objects, 1, "objects")
    orders: list[str] = [order] * n if order != "mixed" else []
    order_rng = random.Random(f"ioi-order:{seed}")
    while len(orders) < n:  # each two pairs: one ABBA, one BABA, in a seeded order (so the first k pairs
        two = ["ABBA", "BABA"]  # are the same whatever n is)
        order_rng.shuffle(two)
        orders += two

    def fill(t: str, first: str, second: str, third: str, place: str, obj: str) -> str:
        body = t[: -len(" [A]")].replace("[B]", first, 1).replace("[A]", second, 1).replace("[B]", third)
        return body.replace("[PLACE]", place).replace("[OBJECT]", obj)

    def make(rng: random.Random, i: int) -> PromptPair:
        t = _template_index(template, len(IOI_TEMPLATES), rng)
        io, s, c1, c2, c3 = rng.sample(names, 5)
        place, obj = rng.choice(places), rng.choice(objects)
        first, second = (s, io) if orders[i] == "BABA" else (io, s)
        clean = fill(IOI_TEMPLATES[t], first, second, s, place, obj)
        if corruption == "abc":
            corrupted = fill(IOI_TEMPLATES[t], c1, c2, c3, place, obj)
        else:
            corrupted = fill(IOI_TEMPLATES[t], first, second, io, place, obj)
        meta = {"task": "ioi", "template": t, "order": orders[i], "corruption": corruption, "io": io, "s": s}
        return PromptPair(clean, corrupted, " " + io, " " + s, meta)

    return _generate(n, seed, tokenizer, make, "ioi")


def repeated_name_pairs(n: int, seed: int = 0, tokenizer: Any = None, *, template: Optional[int] = 0
                        ) -> list[PromptPair]:
    """"Michelle Jones was a top-notch student. Michelle" (answer " Jones") against the
    same with another surname (wrong: that surname). ``template`` indexes
    :data:`REPEATED_NAME_TEMPLATES` (None: random per pair)."""
    tokenizer = _tokenizer(tokenizer)
    if template is not None and not 0 <= template < len(REPEATED_NAME_TEMPLATES):
        raise ConfigError(f"template must be in 0..{len(REPEATED_NAME_TEMPLATES) - 1} or None, got {template}.")
    # the first name also starts the prompt (no leading space there): one token both ways
    firsts = [w for w in single_token_words(NAMES, tokenizer) if w in single_token_words([w], tokenizer, prefix="")]
    lasts = single_token_words(SURNAMES, tokenizer)
    _need(firsts, 1, "first names")
    _need(lasts, 2, "surnames")

    def make(rng: random.Random, i: int) -> PromptPair:
        t = _template_index(template, len(REPEATED_NAME_TEMPLATES), rng)
        first = rng.choice(firsts)
        last, other = rng.sample(lasts, 2)
        fmt = REPEATED_NAME_TEMPLATES[t].format
        return PromptPair(fmt(first=first, last=last), fmt(first=first, last=other), " " + last, " " + other,
                          {"task": "repeated-name", "template": t, "first": first})

    return _generate(n, seed, tokenizer, make, "repeated-name")


def _year_ok(tokenizer: Any, century: int, yy: int) -> bool:
    """' CCYY' is the two tokens ' CC' + 'YY', the latter also the token of 'YY' alone."""
    ids = _ids(tokenizer, f" {century}{yy:02d}")
    return len(ids) == 2 and ids[1:] == _ids(tokenizer, f"{yy:02d}") and ids[:1] == _ids(tokenizer, f" {century}")


def greater_than_pairs(n: int, seed: int = 0, tokenizer: Any = None, *, centuries: Sequence[int] = range(11, 18)
                       ) -> list[PromptPair]:
    """"The war lasted from the year 1732 to the year 17" against "... 1701 ...": answer
    "33" (YY+1), wrong "31" (YY-1). YY is drawn from 03..97, the noun from the nouns of
    Hanna et al. that are one token, the century from ``centuries`` (those whose years
    tokenise as ' CC' + 'YY')."""
    tokenizer = _tokenizer(tokenizer)
    nouns = single_token_words(GREATER_THAN_NOUNS, tokenizer)
    _need(nouns, 1, "nouns")
    years = {c: [yy for yy in range(3, 98) if all(_year_ok(tokenizer, c, y) for y in (yy - 1, yy, yy + 1))]
             for c in centuries if _year_ok(tokenizer, c, 1)}
    years = {c: ys for c, ys in years.items() if ys}
    if not years:
        raise ConfigError(f"No century of {list(centuries)} has years that tokenise as ' CC' + 'YY'; use a "
                          "GPT-2-family tokenizer or other centuries.")

    def make(rng: random.Random, i: int) -> PromptPair:
        noun, century = rng.choice(nouns), rng.choice(sorted(years))
        yy = rng.choice(years[century])
        fmt = GREATER_THAN_TEMPLATE.format
        return PromptPair(fmt(noun=noun, century=century, yy=yy), fmt(noun=noun, century=century, yy=1),
                          f"{yy + 1:02d}", f"{yy - 1:02d}", {"task": "greater-than", "century": century, "yy": yy})

    return _generate(n, seed, tokenizer, make, "greater-than")


# --- factual recall from a file ---------------------------------------------------------------

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


def factual_pairs(path: str | os.PathLike[str], n: Optional[int] = None, seed: int = 0, tokenizer: Any = None
                  ) -> list[PromptPair]:
    """Factual-recall pairs from a JSON-lines file (format: :data:`FACTS_FORMAT`),
    validated before anything runs (every error names the line and the fix).

    ``n``: use n facts, a seeded sample kept in file order (default: all). Facts
    without a corrupted prompt are paired within their token length, in a seeded order.
    Pairs of different facts may have different lengths."""
    tokenizer = _tokenizer(tokenizer)
    path = os.fspath(path)
    facts: list[tuple[str, dict[str, Any], list[int]]] = []
    records = read_records(path, "Facts", f"Pass a JSON-lines file of facts to --facts; {FACTS_FORMAT}", FACTS_FORMAT,
                           '{"prompt": ..., "answer": ...}')
    for where, rec in records:
        for key in rec:
            if key not in _FACT_FIELDS + _FACT_EXTRA:
                close = difflib.get_close_matches(key, _FACT_FIELDS + _FACT_EXTRA, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise CorpusError(f"{where}: unknown field {key!r}{hint}; a fact has prompt, answer and optionally "
                                  "corrupted_prompt and wrong (and subject, relation, id, meta).")
        for key in ("prompt", "answer"):
            if key not in rec:
                raise CorpusError(f"{where} has no field {key!r}; {FACTS_FORMAT}")
        if "corrupted_prompt" in rec and "wrong" not in rec:
            raise CorpusError(f"{where} has a corrupted_prompt but no 'wrong': add the answer the corrupted prompt "
                              "leads to (one token), which the logit difference compares against.")
        if "wrong" in rec and "corrupted_prompt" not in rec:
            raise CorpusError(f"{where} has 'wrong' but no corrupted_prompt: add the corrupted prompt, or drop "
                              "'wrong' to pair the fact with another fact of the same length.")
        for key in _FACT_FIELDS:
            if key in rec and not isinstance(rec[key], str):
                raise CorpusError(f"{where}: {key} must be a string, got {type(rec[key]).__name__}.")
        for key in ("answer", "wrong"):
            if key in rec:
                tok = _ids(tokenizer, rec[key])
                if len(tok) != 1:
                    pieces = [tokenizer.decode([t]) for t in tok]
                    raise ConfigError(f"{where}: {key} {rec[key]!r} is {len(tok)} tokens {pieces}; the logit "
                                      "difference needs one-token answers. Pick a one-token word (mind the leading "
                                      "space: ' Paris' is one token).")
        if rec.get("wrong") is not None and _ids(tokenizer, rec["wrong"]) == _ids(tokenizer, rec["answer"]):
            raise ConfigError(f"{where}: answer and wrong are the same token {rec['answer']!r}; the logit difference "
                              "would be 0. Give the corrupted prompt's own answer as 'wrong'.")
        ids = _ids(tokenizer, rec["prompt"])
        if "corrupted_prompt" in rec and len(_ids(tokenizer, rec["corrupted_prompt"])) != len(ids):
            raise ConfigError(f"{where}: the prompt is {len(ids)} tokens and the corrupted_prompt "
                              f"{len(_ids(tokenizer, rec['corrupted_prompt']))}; patching compares them position by "
                              "position. Reword the corrupted prompt to the same token length.")
        facts.append((where, rec, ids))
    if n is not None:
        if not 1 <= n <= len(facts):
            raise ConfigError(f"n_pairs {n} is outside 1..{len(facts)} (the facts in '{path}'); pass at most "
                              f"{len(facts)}, or omit it to use every fact.")
        keep = sorted(random.Random(f"factual:{seed}").sample(range(len(facts)), n))
        facts = [facts[i] for i in keep]
    return _pair_facts(facts, seed, tokenizer)


def _pair_facts(facts: list[tuple[str, dict[str, Any], list[int]]], seed: int, tokenizer: Any) -> list[PromptPair]:
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
            answer = _ids(tokenizer, facts[i][1]["answer"])
            j = next((cycle[(k + d) % len(cycle)] for d in range(1, len(cycle))
                      if _ids(tokenizer, facts[cycle[(k + d) % len(cycle)]][1]["answer"]) != answer), None)
            if j is None:
                raise ConfigError(f"{facts[i][0]}: no other fact has a prompt of {length} tokens and a different "
                                  "answer to pair it with; add \"corrupted_prompt\" and \"wrong\" to it, or more facts "
                                  "of that length.")
            partner[i] = j
    pairs = []
    for i, (where, rec, _) in enumerate(facts):
        meta = {"task": "factual", "source": where, **{k: rec[k] for k in _FACT_EXTRA if k in rec}}
        if i in partner:
            other = facts[partner[i]]
            meta["paired_with"] = other[0]
            pairs.append(PromptPair(rec["prompt"], other[1]["prompt"], rec["answer"], other[1]["answer"], meta))
        else:
            pairs.append(PromptPair(rec["prompt"], rec["corrupted_prompt"], rec["answer"], rec["wrong"], meta))
    return pairs


# --- by name -----------------------------------------------------------------------------------

#: task name -> what it is (the CLI's --task)
TASKS = {
    "ioi": "indirect object identification, Wang et al. templates, ABC corruption",
    "ioi-flip": "IOI with the subject's second mention flipped to the indirect object",
    "repeated-name": "'Michelle Jones was ... Michelle' -> ' Jones' vs another surname",
    "greater-than": "'The war lasted from the year 1732 to the year 17' vs ...1701 (Hanna et al.)",
    "factual": "facts from a JSON-lines file (--facts)",
}


def make_pairs(task: str, n: Optional[int] = None, seed: int = 0, tokenizer: Any = None,
               facts: str | os.PathLike[str] | None = None) -> list[PromptPair]:
    """Pairs of a task by name (:data:`TASKS`); ``n`` defaults to 16 (factual: every fact)."""
    if task not in TASKS:
        close = difflib.get_close_matches(task, list(TASKS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"Unknown task {task!r}{hint}; expected one of {', '.join(TASKS)}.")
    if task == "factual":
        if facts is None:
            raise ConfigError("The factual task reads facts from a file: pass --facts FILE (facts=...), "
                              f"{FACTS_FORMAT}")
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
