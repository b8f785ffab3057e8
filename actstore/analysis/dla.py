"""Direct logit attribution: each head's and MLP's output, through the final norm's
scale, along the unembedding direction of the answer (minus the wrong one). Exact for
every family whose logits are a sum of those parts through the final norm (LayerNorm or
RMSNorm); refused for one that is not (Gemma 2: post-norms and soft-capped logits)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..families import adapter_for
from ..models import ModelLike
from ..sites import hook_name
from ..store import ActivationStore, ResultWriter
from .common import model_for, save_result, sites_with

__all__ = ["DirectLogitAttribution", "direct_logit_attribution"]


@dataclass
class DirectLogitAttribution:
    # (row, layer, head): contribution of each head's output to the logit (difference)
    heads: np.ndarray
    mlp: np.ndarray  # (row, layer): of each MLP layer's output; NaN where not stored
    rows: list[int]
    positions: list[int]  # the position read in each row
    target: int
    wrong: int | None

    def save(self, store: ActivationStore, out: ResultWriter | None = None) -> list[str]:
        """Write the arrays under results/analysis/dla/ (through ``out``, made beforehand, if given)."""
        return save_result(
            store,
            "dla",
            {"heads": (self.heads, ("row", "layer", "head")), "mlp": (self.mlp, ("row", "layer"))},
            {
                "rows": self.rows,
                "positions": self.positions,
                "target": self.target,
                "wrong": self.wrong,
            },
            out,
        )


def direct_logit_attribution(
    store: ActivationStore,
    model: ModelLike,
    rows: Sequence[int],
    target: int,
    wrong: int | None = None,
    pos: int | None = None,
    progress: bool = True,
) -> DirectLogitAttribution:
    """Per head (from stored z and W_O) and per MLP layer (stored mlp_out): the
    component, centred (LayerNorm only) and divided by the final norm's scale of the
    final residual (as TransformerLens's apply_ln_to_stack), dotted with the final
    norm's weight times the unembedding direction of ``target`` (minus ``wrong``).
    Reads position ``pos``, default the last real token of each row."""
    if wrong is not None and wrong == target:
        raise ConfigError(
            f"The target and the wrong token are the same token ({target}), so every logit difference "
            "is 0; pass another wrong token, or leave it out to attribute the target's logit."
        )
    rows = list(rows)
    if not rows or not all(0 <= r < store.n_rows for r in rows):
        raise ConfigError(
            f"DLA needs rows in 0..{store.n_rows - 1} of the store; got {rows[:5] or 'none'}."
        )
    L = store.layout.seq_len
    if pos is not None and not -L <= pos < L:
        raise ConfigError(
            f"Position {pos} is outside the store's rows of {L} tokens; pass a position in 0..{L - 1} "
            "(or -1 for the last), or leave it out to read each row's last real token."
        )
    positions = _positions(store, rows, pos)
    # a name, a TransformerBridge or a LoadedModel; checked against the store
    loaded = model_for(store, model)
    adapter = adapter_for(loaded, "DLA")
    adapter.check_direct_paths("DLA")
    centre = adapter.final_norm == "layernorm"
    info = loaded.info
    final = hook_name("resid_post", info.n_layers - 1)
    if final not in store.sites:
        raise ConfigError(
            f"DLA needs the final residual ({final}) for the LayerNorm scale; cache it with "
            f"--sites resid_post:{info.n_layers - 1},z:all,mlp_out:all."
        )
    z_sites, mlp_sites = sites_with(store, "attn.hook_z"), sites_with(store, "hook_mlp_out")
    if not z_sites and not mlp_sites:
        raise ConfigError(
            "DLA needs z and/or mlp_out sites in the store; cache them with --sites z:all,mlp_out:all."
        )
    b = loaded.bridge
    W_U = b.W_U.detach().double().cpu()
    for name, tok in (("target", target), ("wrong", wrong)):
        if tok is not None and not 0 <= tok < W_U.shape[1]:
            raise ConfigError(
                f"The {name} token {tok} is outside the model's vocabulary of {W_U.shape[1]} tokens."
            )
    direction = W_U[:, target] - (W_U[:, wrong] if wrong is not None else 0)
    direction = (direction * adapter.final_norm_weight(b).double().cpu()).numpy()  # (d_model,)
    W_O = b.W_O.detach().double().cpu().numpy()  # (layer, head, d_head, d_model)
    eps = float(b.cfg.eps)
    heads = np.full((len(rows), info.n_layers, info.n_heads), np.nan)
    mlp = np.full((len(rows), info.n_layers), np.nan)
    for i, r in enumerate(tqdm(rows, unit="row", desc="dla", disable=not progress)):
        p = positions[i]
        x = store.acts(final, rows=r)[p].astype(np.float64)
        x = x - x.mean() if centre else x
        scale = np.sqrt((x**2).mean() + eps)

        def project(c: np.ndarray) -> np.ndarray:  # (..., d_model) -> (...)
            return ((c - c.mean(-1, keepdims=True) if centre else c) / scale) @ direction

        for s in z_sites:
            z = store.acts(s.hook, rows=r)[p].astype(np.float64)  # (head, d_head)
            hs = s.heads if s.heads is not None else list(range(info.n_heads))
            heads[i, s.layer, hs] = project(np.einsum("hd,hdm->hm", z, W_O[s.layer, hs]))
        for s in mlp_sites:
            mlp[i, s.layer] = project(store.acts(s.hook, rows=r)[p].astype(np.float64))
    return DirectLogitAttribution(heads, mlp, list(rows), positions, target, wrong)


def _positions(store: ActivationStore, rows: Sequence[int], pos: int | None) -> list[int]:
    """The position read in each row: ``pos`` (from the end if negative), else the row's
    last real token; a ``pos`` that is padding in some row is refused, naming the rows."""
    mask = np.stack([store.mask(r) for r in rows])  # (row, pos)
    last = [int(np.flatnonzero(m)[-1]) for m in mask]
    if pos is None:
        return last
    p = pos % mask.shape[1]
    pad = [r for r, m in zip(rows, mask) if not m[p]]
    if pad:
        raise ConfigError(
            f"Position {pos} is padding in {len(pad)} of the {len(rows)} rows (first: row {pad[0]}, whose "
            f"last real token is at {last[rows.index(pad[0])]}); pass a position every row has, or leave "
            "--pos out to read each row's last real token."
        )
    return [p] * len(rows)
