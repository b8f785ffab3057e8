"""Induction heads on repeated random tokens: induction, duplicate-token and previous-token
scores of every head, and the loss on each half."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..corpus import parse_synthetic
from ..errors import ConfigError
from ..store import ActivationStore, ResultWriter
from .common import layer_head_grid, save_result, sites_with

__all__ = ["InductionScores", "induction_scores"]


@dataclass
class InductionScores:
    # (layer, head): mean attention from second-half query q to key q - half_len + 1
    induction: np.ndarray
    prev_token: np.ndarray  # (layer, head): mean attention from q to q - 1, q >= 1
    duplicate: np.ndarray  # (layer, head): mean attention from second-half q to q - half_len
    # (pos,): mean loss of predicting token pos + 1, when 'loss' is stored
    loss_by_pos: np.ndarray | None
    half_len: int
    n_rows: int

    def save(self, store: ActivationStore, out: ResultWriter | None = None) -> list[str]:
        """Write the arrays under results/analysis/induction/ (through ``out``, made beforehand, if given)."""
        arrays: dict[str, tuple[np.ndarray, Sequence[str]]] = {
            name: (getattr(self, name), ("layer", "head"))
            for name in ("induction", "prev_token", "duplicate")
        }
        if self.loss_by_pos is not None:
            arrays["loss_by_pos"] = (self.loss_by_pos, ("pos",))
        return save_result(
            store,
            "induction",
            arrays,
            {
                "half_len": self.half_len,
                "n_rows": self.n_rows,
                "definition": "mean attention over rows and second-half queries q: induction q -> q-half_len+1, "
                "duplicate q -> q-half_len; prev_token over all q >= 1: q -> q-1",
            },
            out,
        )

    @property
    def loss_halves(self) -> tuple[float, float] | None:
        """Mean loss on the first and on the second (repeated) half."""
        if self.loss_by_pos is None:
            return None
        h = self.half_len
        return float(self.loss_by_pos[:h].mean()), float(self.loss_by_pos[h:].mean())


def _half_len(
    store: ActivationStore, half_len: int | None, rows: slice
) -> int:  # half_len given unless synthetic
    """The half length: a repeated-random store's own (a ``half_len`` that contradicts it is
    refused); for another store, ``half_len``, checked against the rows' tokens."""
    corpus = store.meta.corpus
    if corpus.kind == "synthetic":
        own = parse_synthetic(corpus.source, corpus.seq_len).half_len
        if half_len is not None and half_len != own:
            raise ConfigError(
                f"--half-len {half_len} contradicts the store's corpus '{corpus.source}' (half length "
                f"{own}); leave --half-len out to use the store's."
            )
        return own
    assert half_len is not None  # induction_scores refuses a store of another corpus without one
    L = store.layout.seq_len
    if not 1 <= half_len <= (L - 1) // 2:
        raise ConfigError(
            f"Rows of {L} tokens cannot hold BOS + 2 x {half_len} tokens; pass the --half-len of the "
            f"store's repeated sequences (1..{(L - 1) // 2})."
        )
    t = store.tokens(rows)
    differ = np.flatnonzero(
        (t[:, 1 : half_len + 1] != t[:, half_len + 1 : 2 * half_len + 1]).any(1)
    )
    if len(differ):
        raise ConfigError(
            f"{len(differ)} of the {len(t)} rows do not repeat with half length {half_len} (first: row "
            f"{rows.indices(store.n_rows)[0] + int(differ[0])}: tokens 1..{half_len} differ from "
            f"{half_len + 1}..{2 * half_len}); pass the --half-len of the store's repeated sequences."
        )
    return half_len


def induction_scores(
    store: ActivationStore,
    rows: slice = slice(None),
    half_len: int | None = None,
    progress: bool = True,
) -> InductionScores:
    """Scores of every stored attention pattern (other heads are NaN). The half length is
    the store's (a repeated-random corpus); ``half_len`` is for stores of other repeated
    sequences, whose rows must then repeat with it."""
    if half_len is None and store.meta.corpus.kind != "synthetic":
        raise ConfigError(
            f"Store '{store.path}' was not made from repeated random tokens; cache one with "
            "--dataset repeated-random:HALF_LEN, or pass --half-len for a store of repeated sequences."
        )
    sites = sites_with(store, "attn.hook_pattern")
    if not sites:
        raise ConfigError(
            f"Store '{store.path}' holds no attention patterns; cache them with --sites pattern:all."
        )
    a, b, _ = rows.indices(store.n_rows)
    if rows.step not in (None, 1) or b <= a:
        raise ConfigError(
            f"Induction scores need a range of rows of the store (0..{store.n_rows - 1}); got {rows}."
        )
    h = _half_len(store, half_len, slice(a, b))
    L = store.layout.seq_len
    q2 = np.arange(h + 1, 2 * h + 1)  # queries of the second half
    q1 = np.arange(1, L)
    scores = {name: layer_head_grid(store) for name in ("induction", "prev_token", "duplicate")}
    bar = tqdm(total=(b - a) * len(sites), unit="row", desc="induction", disable=not progress)
    for site in sites:
        sums = {name: 0.0 for name in scores}
        for sl, block in store.iter_blocks([site.hook], slice(a, b)):
            p = block[site.hook].astype(np.float64)  # (row, head, query_pos, key_pos)
            sums["induction"] = sums["induction"] + p[:, :, q2, q2 - h + 1].sum(axis=(0, 2))
            sums["duplicate"] = sums["duplicate"] + p[:, :, q2, q2 - h].sum(axis=(0, 2))
            sums["prev_token"] = sums["prev_token"] + p[:, :, q1, q1 - 1].sum(axis=(0, 2))
            bar.update(sl.stop - sl.start)
        heads = site.heads if site.heads is not None else list(range(scores["induction"].shape[1]))
        n = {"induction": len(q2), "duplicate": len(q2), "prev_token": len(q1)}
        for name in scores:
            scores[name][site.layer, heads] = sums[name] / ((b - a) * n[name])
    bar.close()
    loss = None
    if "loss" in store.sites:
        total = np.zeros(L - 1)
        for _, block in store.iter_blocks(["loss"], slice(a, b)):
            total += block["loss"].astype(np.float64).sum(axis=0)
        loss = total / (b - a)
    return InductionScores(
        scores["induction"], scores["prev_token"], scores["duplicate"], loss, h, b - a
    )
