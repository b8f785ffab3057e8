"""The prompt pages' numbers, with no Streamlit: a typed prompt is cached into a small
temporary store by actstore's own caching (a one-document Python list corpus, one row of
BOS + the prompt's tokens), and the store analyses run on it unchanged. So every number on
a page is what `actstore cache` + `actstore analyze` give for that prompt: no second
implementation of the logit lens, DLA or induction scores."""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..analysis import (
    DirectLogitAttribution,
    InductionScores,
    LogitLens,
    direct_logit_attribution,
    induction_scores,
    logit_lens,
    single_token,
)
from ..capture import cache
from ..corpus.demo_text import ioi_pairs
from ..errors import ConfigError
from ..models import LoadedModel
from ..resources import DEMO_MODEL
from ..sites import Site
from ..store import ActivationStore

__all__ = [
    "PromptStore",
    "DefaultPrompt",
    "default_prompt",
    "cache_prompt",
    "token_table",
    "token_labels",
    "prompt_logit_lens",
    "prompt_dla",
    "attention_patterns",
    "repeated_store",
    "prompt_induction",
    "PROMPT_SITES",
    "site_labels",
]

# every site a prompt page reads; one forward per prompt fills them all
PROMPT_SITES = "resid_pre:0,resid_post:all,z:all,mlp_out:all,pattern:all"


@dataclass(frozen=True)
class DefaultPrompt:
    text: str
    answer: str  # the right next token, with its leading space
    wrong: str  # the distractor DLA compares against


def default_prompt(model_name: str) -> DefaultPrompt:
    """An IOI prompt the model can complete: a held-out one of the demo corpus for
    `actstore-demo` (whose vocabulary has its own names), the classic one otherwise."""
    if model_name == DEMO_MODEL:
        p = ioi_pairs(1)[0]
        return DefaultPrompt(p["clean"], p["answer"], p["wrong"])
    return DefaultPrompt(
        "When Mary and John went to the store, John gave a drink to", " Mary", " John"
    )


@dataclass
class PromptStore:
    """A store of one row, BOS + the prompt's tokens, in a temporary folder removed
    with this object."""

    store: ActivationStore
    text: str
    folder: str = field(repr=False)

    def __post_init__(self) -> None:
        weakref.finalize(self, shutil.rmtree, self.folder, True)

    @property
    def tokens(self) -> np.ndarray:
        """int (pos,): BOS then the prompt's token ids."""
        return self.store.tokens(0).astype(np.int64)


def _temp_store(
    model: LoadedModel, dataset: Any, sites: str, **options: Any
) -> tuple[ActivationStore, str]:
    folder = tempfile.mkdtemp(prefix="actstore-app-")
    try:
        store = cache(
            out=os.path.join(folder, "prompt.zarr"),
            model=model,
            dataset=dataset,
            sites=sites,
            progress=False,
            durable=False,
            check_disk=False,
            **options,
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return store, folder


def cache_prompt(model: LoadedModel, text: str, sites: str = PROMPT_SITES) -> PromptStore:
    """Cache ``sites`` of BOS + ``text`` through ``model`` into a temporary one-row store."""
    if not text.strip():
        raise ConfigError("The prompt is empty; type a prompt of at least one token.")
    n = len(model.tokenizer.encode(text, add_special_tokens=False))
    if n + 1 > model.info.n_ctx:
        raise ConfigError(
            f"The prompt is {n} tokens; {model.info.name} reads at most {model.info.n_ctx} with BOS "
            f"({model.info.n_ctx - 1} of the prompt): shorten it."
        )
    store, folder = _temp_store(model, [text], sites, seq_len=n + 1, packing="document", n_rows=1)
    return PromptStore(store, text, folder)


def token_labels(tokenizer: Any, ids: np.ndarray) -> list[str]:
    """'pos:token' for each id: unique axis labels that show where each token is."""
    return [f"{i}:{tokenizer.decode([int(t)])!r}"[:24] for i, t in enumerate(ids)]


def site_labels(hooks: list[str]) -> list[str]:
    """Short axis labels of hook names: 'resid_post 3' for blocks.3.hook_resid_post."""
    out = []
    for h in hooks:
        site = Site.from_hook(h)
        out.append(
            f"{site.short or site.kind} {site.layer}"
            if site.layer is not None
            else (site.short or h)
        )
    return out


def token_table(tokenizer: Any, prompt: PromptStore) -> pd.DataFrame:
    """One line per token of the cached row: pos, id, the token's text, doc and doc_pos
    as the store holds them (BOS has doc -1, doc_pos -1)."""
    s, ids = prompt.store, prompt.tokens
    return pd.DataFrame(
        {
            "pos": np.arange(len(ids)),
            "id": ids,
            "token": [tokenizer.decode([int(t)]) for t in ids],
            "doc": s.doc(0),
            "doc_pos": s.doc_pos(0),
        }
    )


def prompt_logit_lens(
    model: LoadedModel, prompt: PromptStore, k: int = 5, target: str | None = None
) -> LogitLens:
    """`actstore analyze logit-lens` on the prompt's row: top-k per residual site and
    position; the tracked token is ``target`` (one token) or else the next token."""
    tid = single_token(model.tokenizer, target) if target else None
    return logit_lens(prompt.store, model, [0], k=k, target=tid, progress=False)


def prompt_dla(
    model: LoadedModel, prompt: PromptStore, answer: str, wrong: str | None
) -> DirectLogitAttribution:
    """`actstore analyze dla` on the prompt's row at its last token: each head and MLP
    on logit(answer) - logit(wrong)."""
    tok = model.tokenizer
    return direct_logit_attribution(
        prompt.store,
        model,
        [0],
        single_token(tok, answer),
        single_token(tok, wrong) if wrong else None,
        progress=False,
    )


def attention_patterns(prompt: PromptStore) -> np.ndarray:
    """float (layer, head, query_pos, key_pos): the cached attention patterns of the row."""
    m = prompt.store.meta.model
    out = np.full((m.n_layers, m.n_heads, len(prompt.tokens), len(prompt.tokens)), np.nan)
    for site in prompt.store.meta.sites:
        if site.hook.endswith("attn.hook_pattern"):
            heads = site.heads if site.heads is not None else list(range(m.n_heads))
            out[site.layer, heads] = prompt.store.acts(site.hook, rows=0)
    return out


def repeated_store(model: LoadedModel, half_len: int, n_rows: int, seed: int = 0) -> PromptStore:
    """`--dataset repeated-random:HALF_LEN:SEED` rows cached with every attention
    pattern and the per-token loss, into a temporary store."""
    if not 1 <= half_len <= (model.info.n_ctx - 1) // 2:
        raise ConfigError(
            f"The half length {half_len} does not fit {model.info.name}'s context of {model.info.n_ctx} "
            f"tokens as BOS + 2 x half; pass 1..{(model.info.n_ctx - 1) // 2}."
        )
    if n_rows < 1:
        raise ConfigError(f"Induction scores need at least 1 row; got {n_rows}.")
    store, folder = _temp_store(
        model, f"repeated-random:{half_len}:{seed}", "pattern:all,loss", n_rows=n_rows
    )
    return PromptStore(store, f"repeated-random:{half_len}:{seed}", folder)


def prompt_induction(rep: PromptStore) -> InductionScores:
    """`actstore analyze induction` over the repeated-token store."""
    return induction_scores(rep.store, progress=False)
