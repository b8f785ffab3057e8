"""The embedded demo: `actstore-demo`, a small GPT-2-architecture DEMO model, NOT GPT-2
(its files: :mod:`actstore.resources`, re-exported here), its synthetic corpus
(:mod:`actstore.demo.data`), the measurements of its structure
(:mod:`actstore.demo.measures`) and `actstore tour` (:mod:`actstore.demo.tour`)."""

from ..resources import (
    DEMO_MODEL,
    DEMO_MODEL_LABEL,
    build_random_gpt2,
    demo_model_dir,
    demo_tokenizer,
    gpt2_tokenizer,
    tokenizer_for,
)
from .measures import ioi_logit_diffs, repeated_tokens

__all__ = [
    "DEMO_MODEL",
    "DEMO_MODEL_LABEL",
    "demo_model_dir",
    "demo_tokenizer",
    "gpt2_tokenizer",
    "tokenizer_for",
    "build_random_gpt2",
    "repeated_tokens",
    "ioi_logit_diffs",
]
