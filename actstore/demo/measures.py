"""Two measurements of the demo model, used by the training script, the tour and the
tests: repeated random token rows (induction) and IOI logit differences."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["repeated_tokens", "ioi_logit_diffs"]


def repeated_tokens(tokenizer: Any, n_rows: int, half_len: int, seed: int = 0) -> np.ndarray:
    """int32 (row, pos): the rows of ``--dataset repeated-random:HALF_LEN:SEED``, BOS
    then half_len random non-special tokens twice."""
    from ..corpus import RepeatedRandom

    blocks, got = [], 0
    for _, block in RepeatedRandom(half_len, seed).rows(tokenizer, 0):
        blocks.append(block)
        got += len(block)
        if got >= n_rows:
            return np.concatenate(blocks)[:n_rows]
    raise AssertionError("unreachable")


def ioi_logit_diffs(model: Any, tokenizer: Any, pairs: Sequence[dict[str, str]]) -> np.ndarray:
    """float64 (pair,): logit(answer) - logit(wrong) after each clean prompt (as BOS +
    text). ``model`` is a Hugging Face causal LM or a TransformerBridge."""
    import torch

    bos = tokenizer.bos_token_id
    enc = [[bos] + tokenizer.encode(p["clean"], add_special_tokens=False) for p in pairs]
    ans = [
        (
            tokenizer.encode(p["answer"], add_special_tokens=False)[0],
            tokenizer.encode(p["wrong"], add_special_tokens=False)[0],
        )
        for p in pairs
    ]
    out = np.empty(len(pairs))
    by_len: dict[int, list[int]] = {}
    for i, ids in enumerate(enc):
        by_len.setdefault(len(ids), []).append(i)
    with torch.no_grad():
        for idx in by_len.values():
            logits = model(torch.tensor([enc[i] for i in idx]))
            logits = getattr(logits, "logits", logits)[:, -1].double()  # (pair, d_vocab)
            a = torch.tensor([ans[i][0] for i in idx])
            w = torch.tensor([ans[i][1] for i in idx])
            out[idx] = (logits.gather(1, a[:, None]) - logits.gather(1, w[:, None]))[:, 0].numpy()
    return out
