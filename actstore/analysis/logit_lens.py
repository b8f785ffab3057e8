"""The logit lens: every stored residual decoded as the model decodes its final one (the
final norm, the unembedding and, in Gemma 2, the logits' soft-capping: the family
adapter's ``logits``); top-k tokens and the rank and probability of the next (or a
target) token."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..families import adapter_for
from ..models import ModelLike
from ..sites import Site
from ..store import ActivationStore, ResultWriter
from .common import model_for, save_result

__all__ = ["LogitLens", "logit_lens"]


@dataclass
class LogitLens:
    hooks: list[str]  # the residual sites decoded, in model order
    rows: list[int]
    target: np.ndarray  # int (row, pos): the token whose probability is tracked
    target_prob: np.ndarray  # (row, site, pos)
    target_rank: np.ndarray  # int (row, site, pos): 0 = top-1
    topk_tokens: np.ndarray  # int (row, site, pos, k)
    topk_probs: np.ndarray  # (row, site, pos, k)

    def save(self, store: ActivationStore, out: ResultWriter | None = None) -> list[str]:
        """Write the arrays under results/analysis/logit_lens/ (through ``out``, made beforehand, if given)."""
        d = ("row", "site", "pos")
        return save_result(
            store,
            "logit_lens",
            {
                "target": (self.target, ("row", "pos")),
                "target_prob": (self.target_prob, d),
                "target_rank": (self.target_rank, d),
                "topk_tokens": (self.topk_tokens, (*d, "k")),
                "topk_probs": (self.topk_probs, (*d, "k")),
            },
            {"rows": self.rows, "sites": self.hooks},
            out,
        )


def _resid_hooks(store: ActivationStore) -> list[str]:
    order = {"resid_pre": 0, "resid_mid": 1, "resid_post": 2}
    sites = [site for site in map(Site.from_hook, store.sites) if site.short in order]
    if not sites:
        raise ConfigError(
            f"Store '{store.path}' holds no residual stream; cache it with --sites resid_post:all."
        )
    return [
        site.hook for site in sorted(sites, key=lambda site: (site.layer, order[site.short or ""]))
    ]


def logit_lens(
    store: ActivationStore,
    model: ModelLike,
    rows: Sequence[int],
    k: int = 5,
    target: int | None = None,
    progress: bool = True,
) -> LogitLens:
    """Decode each stored residual as the model decodes its final residual.
    The tracked token is ``target`` at every position, else the row's next token
    (the last position then has none: probability NaN, rank -1, target -1)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(
            f"k (--k) is the number of top tokens kept per position: at least 1; got {k!r}."
        )
    rows = list(rows)
    if not rows or not all(0 <= r < store.n_rows for r in rows):
        raise ConfigError(
            f"The logit lens needs rows in 0..{store.n_rows - 1} of the store; got {rows[:5] or 'none'}."
        )
    hooks = _resid_hooks(store)
    # a name, a TransformerBridge or a LoadedModel; checked against the store
    loaded = model_for(store, model)
    adapter = adapter_for(loaded, "The logit lens")
    vocab = int(loaded.bridge.W_U.shape[-1])
    if k > vocab:
        raise ConfigError(
            f"k (--k) {k} is more than the model's vocabulary of {vocab} tokens; pass at most {vocab}."
        )
    if target is not None and not 0 <= target < vocab:
        raise ConfigError(
            f"The target token {target} is outside the model's vocabulary of {vocab} tokens."
        )
    L = store.layout.seq_len
    R, S = len(rows), len(hooks)
    out_prob, out_rank = np.zeros((R, S, L)), np.zeros((R, S, L), np.int64)
    top_t, top_p = np.zeros((R, S, L, k), np.int64), np.zeros((R, S, L, k))
    targets = np.zeros((R, L), np.int64)
    bridge = loaded.bridge
    dtype = next(bridge.unembed.parameters()).dtype
    for i, r in enumerate(tqdm(rows, unit="row", desc="logit lens", disable=not progress)):
        tokens = store.tokens(r).astype(np.int64)
        for j, hook in enumerate(hooks):
            # (pos, d_model)
            x = torch.from_numpy(store.acts(hook, rows=r)).to(loaded.device, dtype)
            with torch.inference_mode():
                # (pos, vocab)
                probs = torch.softmax(adapter.logits(bridge, x[None])[0].double(), dim=-1)
            tp, tt = probs.topk(k, dim=-1)
            top_p[i, j], top_t[i, j] = tp.cpu().numpy(), tt.cpu().numpy()
            tgt = np.full(L, target) if target is not None else np.append(tokens[1:], 0)
            idx = torch.from_numpy(tgt).to(probs.device)
            p_t = probs.gather(-1, idx[:, None])  # (pos, 1)
            out_prob[i, j] = p_t[:, 0].cpu().numpy()
            out_rank[i, j] = (probs > p_t).sum(-1).cpu().numpy()
            if target is None:
                tgt[-1], out_prob[i, j, -1], out_rank[i, j, -1] = -1, np.nan, -1
            targets[i] = tgt
    return LogitLens(hooks, list(rows), targets, out_prob, out_rank, top_t, top_p)
