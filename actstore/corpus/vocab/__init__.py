"""The word lists every prompt generator draws from, in one place.

Two families, because two tokenizers: the IOI paper's lists (Wang et al. 2022, and the
surnames and nouns of the repeated-name and greater-than tasks), filtered by the task
generators to the words that are one token of the tokenizer at hand
(:mod:`actstore.patching.tasks`; the lists are in :mod:`actstore.corpus.vocab.tasks`); and
the demo corpus's lists, every word one token of the demo model's small tokenizer with its
leading space (:mod:`actstore.demo.data`; the lists are in :mod:`actstore.corpus.vocab.demo`).
Their order is part of the generators' output: append, never reorder.
"""

from __future__ import annotations

from .demo import DEMO_NAMES, DEMO_OBJECTS, DEMO_PLACES, DEMO_ROLES, DEMO_SURNAMES
from .tasks import GREATER_THAN_NOUNS, IOI_NAMES, IOI_OBJECTS, IOI_PLACES, SURNAMES

__all__ = [
    "IOI_NAMES",
    "IOI_PLACES",
    "IOI_OBJECTS",
    "SURNAMES",
    "GREATER_THAN_NOUNS",
    "DEMO_NAMES",
    "DEMO_SURNAMES",
    "DEMO_OBJECTS",
    "DEMO_PLACES",
    "DEMO_ROLES",
]
