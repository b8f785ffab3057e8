"""The embedded demo: `actstore-demo`, a small GPT-2-architecture DEMO model, NOT GPT-2
(its files: :mod:`actstore.resources`, re-exported here), its synthetic corpus
(:mod:`actstore.demo.data`), the measurements of its structure
(:mod:`actstore.demo.measures`) and `actstore tour` (:mod:`actstore.demo.tour`)."""

from .. import resources
from ..resources import *  # noqa: F403  (the demo model's files, re-exported: resources.__all__)
from .measures import ioi_logit_diffs, repeated_tokens

__all__ = [*resources.__all__, "repeated_tokens", "ioi_logit_diffs"]
