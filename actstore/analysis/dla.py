"""Direct logit attribution: each head's and MLP's output, through the final LayerNorm's
scale, along the unembedding direction of the answer (minus the wrong one)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..models import ModelLike
from ..sites import hook_name
from ..store import ActivationStore

from .common import model_for, save_result, sites_with

__all__ = ["DirectLogitAttribution", "direct_logit_attribution"]


@dataclass
class DirectLogitAttribution:
    heads: np.ndarray  # (row, layer, head): contribution of each head's output to the logit (difference)
    mlp: np.ndarray  # (row, layer): of each MLP layer's output; NaN where not stored
    rows: list[int]
    positions: list[int]  # the position read in each row
    target: int
    wrong: int | None

    def save(self, store: ActivationStore) -> list[str]:
        return save_result(store, "dla", {"heads": (self.heads, ("row", "layer", "head")), "mlp": (self.mlp, ("row", "layer"))},
                     {"rows": self.rows, "positions": self.positions, "target": self.target, "wrong": self.wrong})


def direct_logit_attribution(store: ActivationStore, model: ModelLike, rows: Sequence[int], target: int,
                             wrong: int | None = None, pos: int | None = None,
                             progress: bool = True) -> DirectLogitAttribution:
    """Per head (from stored z and W_O) and per MLP layer (stored mlp_out): the
    component, centred and divided by the final LayerNorm's scale of the final
    residual (as TransformerLens's apply_ln_to_stack), dotted with ln_final.w times
    the unembedding direction of ``target`` (minus ``wrong``). Reads position ``pos``,
    default the last real token of each row."""
    loaded = model_for(store, model)  # a name, a TransformerBridge or a LoadedModel; checked against the store
    info = loaded.info
    final = hook_name("resid_post", info.n_layers - 1)
    if final not in store.sites:
        raise ConfigError(f"DLA needs the final residual ({final}) for the LayerNorm scale; cache it with "
                          f"--sites resid_post:{info.n_layers - 1},z:all,mlp_out:all.")
    z_sites, mlp_sites = sites_with(store, "attn.hook_z"), sites_with(store, "hook_mlp_out")
    if not z_sites and not mlp_sites:
        raise ConfigError("DLA needs z and/or mlp_out sites in the store; cache them with --sites z:all,mlp_out:all.")
    b = loaded.bridge
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
            z = store.acts(s.hook, rows=r)[p].astype(np.float64)  # (head, d_head)
            hs = s.heads if s.heads is not None else list(range(info.n_heads))
            heads[i, s.layer, hs] = project(np.einsum("hd,hdm->hm", z, W_O[s.layer, hs]))
        for s in mlp_sites:
            mlp[i, s.layer] = project(store.acts(s.hook, rows=r)[p].astype(np.float64))
    return DirectLogitAttribution(heads, mlp, list(rows), positions, target, wrong)
