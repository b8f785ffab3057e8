"""Standard analyses over a store: induction-head scores (Olsson et al. 2022), the
logit lens (nostalgebraist 2020) and direct logit attribution (Elhage et al. 2021).
Each streams over rows, so it works on stores larger than memory, and writes its
arrays under results/analysis/<name>/ with named dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import ConfigError, StoreMismatchError
from .models import LoadedModel, load_model
from .store import ActivationStore
from .corpus import parse_synthetic

__all__ = ["InductionScores", "induction_scores", "LogitLens", "logit_lens", "DirectLogitAttribution",
           "direct_logit_attribution", "model_for", "single_token"]


# --- helpers ---------------------------------------------------------------------

def model_for(store: ActivationStore, name: str | None = None, device: str | None = "auto") -> LoadedModel:
    """Load the store's model (or ``name``) and check its weights are the store's."""
    meta = store.metadata["model"]
    model = load_model(name or meta["name"], meta["dtype"], device, meta.get("revision"))
    if model.info.fingerprint != meta["fingerprint"]:
        raise StoreMismatchError(
            f"Model '{name or meta['name']}' has other weights than the store's ({meta['fingerprint'][:19]}...); "
            "pass --model with the model the store was made with."
        )
    return model


def single_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ConfigError(f"'{text}' is {len(ids)} tokens ({ids}); pass a single token, e.g. ' Mary' with its leading space.")
    return int(ids[0])


def _sites_with(store: ActivationStore, suffix: str) -> list[dict[str, Any]]:
    return [s for s in store.metadata["sites"] if s["hook"].startswith("blocks.") and s["hook"].endswith(suffix)]


def _save(store: ActivationStore, name: str, arrays: dict[str, tuple[np.ndarray, Sequence[str]]],
          attrs: dict[str, Any]) -> list[str]:
    """Write each array to results/analysis/<name>/<key> with its dimension names."""
    for key, (data, dims) in arrays.items():
        store.save_result(f"analysis/{name}/{key}", np.asarray(data), dims, attrs)
    return [f"results/analysis/{name}/{key}" for key in arrays]


def _grid(store: ActivationStore) -> np.ndarray:
    m = store.metadata["model"]
    return np.full((m["n_layers"], m["n_heads"]), np.nan)


# --- induction -----------------------------------------------------------------------

@dataclass
class InductionScores:
    induction: np.ndarray  # (layer, head): mean attention from second-half query q to key q - half_len + 1
    prev_token: np.ndarray  # (layer, head): mean attention from q to q - 1, q >= 1
    duplicate: np.ndarray  # (layer, head): mean attention from second-half q to q - half_len
    loss_by_pos: np.ndarray | None  # (pos,): mean loss of predicting token pos + 1, when 'loss' is stored
    half_len: int
    n_rows: int

    def save(self, store: ActivationStore) -> list[str]:
        arrays = {name: (getattr(self, name), ("layer", "head")) for name in ("induction", "prev_token", "duplicate")}
        if self.loss_by_pos is not None:
            arrays["loss_by_pos"] = (self.loss_by_pos, ("pos",))
        return _save(store, "induction", arrays, {"half_len": self.half_len, "n_rows": self.n_rows,
                     "definition": "mean attention over rows and second-half queries q: induction q -> q-half_len+1, "
                                   "duplicate q -> q-half_len; prev_token over all q >= 1: q -> q-1"})

    @property
    def loss_halves(self) -> tuple[float, float] | None:
        """Mean loss on the first and on the second (repeated) half."""
        if self.loss_by_pos is None:
            return None
        h = self.half_len
        return float(self.loss_by_pos[:h].mean()), float(self.loss_by_pos[h:].mean())


def _half_len(store: ActivationStore, half_len: int | None) -> int:
    if half_len is not None:
        return half_len
    corpus = store.metadata["corpus"]
    if corpus["kind"] == "synthetic":
        return parse_synthetic(corpus["source"], corpus["seq_len"]).half_len
    raise ConfigError(f"Store '{store.path}' was not made from repeated random tokens; cache one with "
                      "--dataset repeated-random:HALF_LEN, or pass --half-len for a store of repeated sequences.")


def induction_scores(store: ActivationStore, rows: slice = slice(None), half_len: int | None = None,
                     progress: bool = True) -> InductionScores:
    """Scores of every stored attention pattern (other heads are NaN)."""
    h = _half_len(store, half_len)
    L = store.layout.seq_len
    if L < 2 * h + 1:
        raise ConfigError(f"Rows of {L} tokens cannot hold BOS + 2 x {h} tokens; pass the right --half-len.")
    sites = _sites_with(store, "attn.hook_pattern")
    if not sites:
        raise ConfigError(f"Store '{store.path}' holds no attention patterns; cache them with --sites pattern:all.")
    q2 = np.arange(h + 1, 2 * h + 1)  # queries of the second half
    q1 = np.arange(1, L)
    scores = {name: _grid(store) for name in ("induction", "prev_token", "duplicate")}
    a, b, _ = rows.indices(store.n_rows)
    bar = tqdm(total=(b - a) * len(sites), unit="row", desc="induction", disable=not progress)
    for site in sites:
        sums = {name: 0.0 for name in scores}
        for sl, block in store.iter_blocks([site["hook"]], slice(a, b)):
            p = block[site["hook"]].astype(np.float64)  # (row, head, query_pos, key_pos)
            sums["induction"] = sums["induction"] + p[:, :, q2, q2 - h + 1].sum(axis=(0, 2))
            sums["duplicate"] = sums["duplicate"] + p[:, :, q2, q2 - h].sum(axis=(0, 2))
            sums["prev_token"] = sums["prev_token"] + p[:, :, q1, q1 - 1].sum(axis=(0, 2))
            bar.update(sl.stop - sl.start)
        heads = site["heads"] if site["heads"] is not None else list(range(scores["induction"].shape[1]))
        n = {"induction": len(q2), "duplicate": len(q2), "prev_token": len(q1)}
        for name in scores:
            scores[name][site["layer"], heads] = sums[name] / ((b - a) * n[name])
    bar.close()
    loss = None
    if "loss" in store.sites:
        total = np.zeros(L - 1)
        for _, block in store.iter_blocks(["loss"], slice(a, b)):
            total += block["loss"].astype(np.float64).sum(axis=0)
        loss = total / (b - a)
    return InductionScores(scores["induction"], scores["prev_token"], scores["duplicate"], loss, h, b - a)


# --- logit lens ------------------------------------------------------------------------

@dataclass
class LogitLens:
    hooks: list[str]  # the residual sites decoded, in model order
    rows: list[int]
    target: np.ndarray  # int (row, pos): the token whose probability is tracked
    target_prob: np.ndarray  # (row, site, pos)
    target_rank: np.ndarray  # int (row, site, pos): 0 = top-1
    topk_tokens: np.ndarray  # int (row, site, pos, k)
    topk_probs: np.ndarray  # (row, site, pos, k)

    def save(self, store: ActivationStore) -> list[str]:
        d = ("row", "site", "pos")
        return _save(store, "logit_lens", {"target": (self.target, ("row", "pos")), "target_prob": (self.target_prob, d),
                                           "target_rank": (self.target_rank, d), "topk_tokens": (self.topk_tokens, (*d, "k")),
                                           "topk_probs": (self.topk_probs, (*d, "k"))},
                     {"rows": self.rows, "sites": self.hooks})


def _resid_hooks(store: ActivationStore) -> list[str]:
    hooks = [s["hook"] for s in store.metadata["sites"] if s["hook"].endswith(("hook_resid_pre", "hook_resid_mid", "hook_resid_post"))]
    if not hooks:
        raise ConfigError(f"Store '{store.path}' holds no residual stream; cache it with --sites resid_post:all.")
    order = {"pre": 0, "mid": 1, "post": 2}
    return sorted(hooks, key=lambda k: (int(k.split(".")[1]), order[k.rsplit("_", 1)[1]]))


def logit_lens(store: ActivationStore, model: LoadedModel, rows: Sequence[int], k: int = 5,
               target: int | None = None, progress: bool = True) -> LogitLens:
    """Decode each stored residual through the final LayerNorm and the unembedding.
    The tracked token is ``target`` at every position, else the row's next token
    (the last position then has none: probability NaN, rank -1, target -1)."""
    hooks = _resid_hooks(store)
    L = store.layout.seq_len
    R, S = len(rows), len(hooks)
    out_prob, out_rank = np.zeros((R, S, L)), np.zeros((R, S, L), np.int64)
    top_t, top_p = np.zeros((R, S, L, k), np.int64), np.zeros((R, S, L, k))
    targets = np.zeros((R, L), np.int64)
    bridge = model.bridge
    dtype = next(bridge.unembed.parameters()).dtype
    for i, r in enumerate(tqdm(rows, unit="row", desc="logit lens", disable=not progress)):
        tokens = store.tokens(r).astype(np.int64)
        for j, hook in enumerate(hooks):
            x = torch.from_numpy(store.acts(hook, rows=r)).to(model.device, dtype)  # (pos, d_model)
            with torch.inference_mode():
                probs = torch.softmax(bridge.unembed(bridge.ln_final(x[None]))[0].double(), dim=-1)  # (pos, vocab)
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


# --- direct logit attribution ---------------------------------------------------------------

@dataclass
class DirectLogitAttribution:
    heads: np.ndarray  # (row, layer, head): contribution of each head's output to the logit (difference)
    mlp: np.ndarray  # (row, layer): of each MLP layer's output; NaN where not stored
    rows: list[int]
    positions: list[int]  # the position read in each row
    target: int
    wrong: int | None

    def save(self, store: ActivationStore) -> list[str]:
        return _save(store, "dla", {"heads": (self.heads, ("row", "layer", "head")), "mlp": (self.mlp, ("row", "layer"))},
                     {"rows": self.rows, "positions": self.positions, "target": self.target, "wrong": self.wrong})


def direct_logit_attribution(store: ActivationStore, model: LoadedModel, rows: Sequence[int], target: int,
                             wrong: int | None = None, pos: int | None = None,
                             progress: bool = True) -> DirectLogitAttribution:
    """Per head (from stored z and W_O) and per MLP layer (stored mlp_out): the
    component, centred and divided by the final LayerNorm's scale of the final
    residual (as TransformerLens's apply_ln_to_stack), dotted with ln_final.w times
    the unembedding direction of ``target`` (minus ``wrong``). Reads position ``pos``,
    default the last real token of each row."""
    info = model.info
    final = f"blocks.{info.n_layers - 1}.hook_resid_post"
    if final not in store.sites:
        raise ConfigError(f"DLA needs the final residual ({final}) for the LayerNorm scale; cache it with "
                          f"--sites resid_post:{info.n_layers - 1},z:all,mlp_out:all.")
    z_sites, mlp_sites = _sites_with(store, "attn.hook_z"), _sites_with(store, "hook_mlp_out")
    if not z_sites and not mlp_sites:
        raise ConfigError("DLA needs z and/or mlp_out sites in the store; cache them with --sites z:all,mlp_out:all.")
    b = model.bridge
    W_U = b.W_U.detach().double().cpu()
    direction = W_U[:, target] - (W_U[:, wrong] if wrong is not None else 0)
    direction = (direction * b.ln_final.w.detach().double().cpu()).numpy()  # (d_model,)
    W_O = b.W_O.detach().double().cpu().numpy()  # (layer, head, d_head, d_model)
    eps = float(b.cfg.eps)
    heads = np.full((len(rows), info.n_layers, info.n_heads), np.nan)
    mlp = np.full((len(rows), info.n_layers), np.nan)
    positions = []
    for i, r in enumerate(tqdm(rows, unit="row", desc="dla", disable=not progress)):
        p = pos if pos is not None else int(np.flatnonzero(store.mask(r))[-1])
        positions.append(p)
        x = store.acts(final, rows=r)[p].astype(np.float64)
        scale = np.sqrt(((x - x.mean()) ** 2).mean() + eps)

        def project(c: np.ndarray) -> np.ndarray:  # (..., d_model) -> (...)
            return ((c - c.mean(-1, keepdims=True)) / scale) @ direction

        for s in z_sites:
            z = store.acts(s["hook"], rows=r)[p].astype(np.float64)  # (head, d_head)
            hs = s["heads"] if s["heads"] is not None else list(range(info.n_heads))
            heads[i, s["layer"], hs] = project(np.einsum("hd,hdm->hm", z, W_O[s["layer"], hs]))
        for s in mlp_sites:
            mlp[i, s["layer"]] = project(store.acts(s["hook"], rows=r)[p].astype(np.float64))
    return DirectLogitAttribution(heads, mlp, list(rows), positions, target, wrong)
