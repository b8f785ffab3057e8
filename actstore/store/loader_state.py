"""The training loader's state: where it stands (epoch, batches yielded) and everything that
fixes the order of its batches: the store's identity (model weights, corpus, layout), the
sites, the rows and positions it reads, and the settings of the order (seed, shuffle, batch
size, world size, ...). A state loads only into a loader that yields the same batches, and
its position is range-checked; anything else is a ConfigError naming both sides.

    {"version": 2, "epoch": 3, "batches": 17, "store": {...}, "sites": [...], "rows": [0, 4096],
     "seed": 0, "batch_size": 4096, "world_size": 8, ...}

Every value is a JSON type (lists, not tuples), so a state survives ``json`` as well as
``torch.save``. It holds no rank: any rank's state resumes every rank of the same run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from numbers import Integral
from typing import Any

from ..errors import ConfigError
from .base import StoreLike

__all__ = ["STATE_VERSION", "store_identity", "check_state"]

STATE_VERSION = 2  # 1: without the store's identity (actstore before it)
_POSITION = ("epoch", "batches")
# the settings that fix the order of the batches, in the order they are compared
SETTINGS = (
    "sites",
    "rows",
    "skip_bos",
    "skip_padding",
    "world_size",
    "seed",
    "shuffle",
    "batch_size",
    "drop_last",
    "even_batches",
    "buffer_tokens",
)


def store_identity(store: StoreLike) -> dict[str, Any]:
    """What makes two stores hold the same activations: the model's weights, the corpus, the layout."""
    m = store.meta
    corpus = json.dumps(m.corpus.to_dict(), sort_keys=True, default=str).encode()
    return {
        "model": m.model.name,
        "fingerprint": m.model.fingerprint,
        "corpus": str(m.corpus.source),
        "corpus_sha256": hashlib.sha256(corpus).hexdigest()[:16],
        "layout": m.layout.to_dict(),
    }


_KINDS = {int: "an integer", bool: "True or False", list: "a list", str: "a string"}


def _rows_text(key: Any) -> str:
    """A RowSelection's key as the user would pass it."""
    if isinstance(key, list) and len(key) == 2:
        return f"slice({key[0]}, {key[1]})"
    if isinstance(key, list) and len(key) == 4:
        return f"<{key[2]} rows of {key[0]}..{key[1] - 1}, selection {key[3]}>"
    return repr(key)


def _not_a_state(why: str) -> ConfigError:
    return ConfigError(
        f"The loader state {why}: it is not a dict that ActivationLoader.state_dict() returned. Pass "
        "the dict a loader of this store saved (e.g. checkpoint['loader']), or start afresh."
    )


def _store_diffs(theirs: Any, mine: dict[str, Any]) -> list[str]:
    if not isinstance(theirs, Mapping):
        return [f"store identity {theirs!r}"]
    out = []
    if theirs.get("fingerprint") != mine["fingerprint"]:
        out.append(
            f"the model's weights: saved from model '{theirs.get('model')}' (weights {theirs.get('fingerprint')}),"
            f" this store's is model '{mine['model']}' (weights {mine['fingerprint']})"
        )
    if theirs.get("corpus_sha256") != mine["corpus_sha256"]:
        out.append(
            f"the corpus: saved from corpus '{theirs.get('corpus')}' (metadata {theirs.get('corpus_sha256')}), "
            f"this store's is '{mine['corpus']}' (metadata {mine['corpus_sha256']})"
        )
    if theirs.get("layout") != mine["layout"]:
        out.append(
            f"the layout: saved from {theirs.get('layout')}, this store has {mine['layout']}"
        )
    return out


def check_state(
    state: Any,
    mine: dict[str, Any],
    path: str,
    n_batches: Callable[[int], int],
    default_buffer: bool,
) -> tuple[int, int]:
    """(epoch, batches) of ``state`` once it is a state of a loader like this one (``mine``:
    this loader's state_dict) at a position this loader has; else a ConfigError naming the
    difference, both sides and the fix. ``n_batches(epoch)``: this rank's batches of that epoch."""
    if not isinstance(state, Mapping):
        raise _not_a_state(f"is a {type(state).__name__}")
    if "store" not in state and "seed" in state and "batches" in state:
        raise ConfigError(
            "The loader state was saved by an older actstore, without the store's identity, so it cannot "
            f"be checked against store '{path}'. Start the loader afresh, or, if you know the state is "
            "this store's and this loader's settings are the saved run's, load "
            "{**loader.state_dict(), 'epoch': state['epoch'], 'batches': state['batches']}."
        )
    missing = [k for k in ("version", *_POSITION, "store", *SETTINGS) if k not in state]
    if missing:
        raise _not_a_state(f"lacks {', '.join(map(repr, missing))}")
    if state["version"] != STATE_VERSION:
        raise ConfigError(
            f"The loader state has version {state['version']!r}; this actstore reads version "
            f"{STATE_VERSION}. Save it again with this actstore's loader.state_dict(), or start afresh."
        )
    diffs = _store_diffs(state["store"], mine["store"])
    if diffs:
        raise ConfigError(
            f"The loader state was saved from another store than '{path}': {'; '.join(diffs)}. Load it "
            "into a loader of the store it was saved from (the same model, corpus and layout)."
        )
    for key in SETTINGS:
        theirs, have = state[key], mine[key]
        if type(theirs) is not type(have):
            raise _not_a_state(
                f"has {key}={theirs!r} (a loader saves {_KINDS.get(type(have), type(have).__name__)})"
            )
        if theirs != have:
            show = _rows_text if key == "rows" else repr
            note = (
                " (its default for this batch size)"
                if key == "buffer_tokens" and default_buffer
                else ""
            )
            procs = " and as many processes" if key == "world_size" else ""
            raise ConfigError(
                f"The loader state was saved with {key}={show(theirs)}, this loader has "
                f"{key}={show(have)}{note}; make the loader with {key}={show(theirs)}{procs} (the saved "
                "run's settings) to resume it, or start afresh."
            )
    epoch, batches = state["epoch"], state["batches"]
    for key, v in (("epoch", epoch), ("batches", batches)):
        if not isinstance(v, Integral) or isinstance(v, bool) or v < 0:
            raise _not_a_state(f"has {key}={v!r} (a loader saves a non-negative integer)")
    n = n_batches(int(epoch))
    if batches > n:
        raise ConfigError(
            f"The loader state's position (epoch {epoch}, batches={batches}) is out of range: this "
            f"loader's epoch {epoch} has {n} batches on this rank, so a saved state has batches 0..{n}. "
            "The state is damaged or from another loader; pass the dict loader.state_dict() returned, "
            "or start afresh."
        )
    return int(epoch), int(batches)
