"""The logit lens of the prompt (actstore.analysis.logit_lens on its one-row store): the
probability of the tracked token at every residual site and position, the top-k tokens
in the hover, and the tracked token's rank."""

from __future__ import annotations

import numpy as np
import streamlit as st

from .. import state
from ..figures import heatmap, long_table, show_figure
from ..prompt_data import default_prompt, prompt_logit_lens, site_labels, token_labels

TITLE = "Logit lens"
SECTION = "Prompt"


def render() -> None:
    st.header("Logit lens")
    m, p = state.model_and_prompt()
    left, right = st.columns([1, 3])
    k = int(left.number_input("Top k", min_value=1, max_value=50, value=5, key="lens-k"))
    d = default_prompt(m.info.name)  # its answer is the default target of the default prompt
    target = right.text_input(
        "Target token (one token, with its leading space; empty: the next token)",
        value=d.answer if p.text == d.text else "",
        key="lens-target",
    )
    lens = prompt_logit_lens(m, p, k=k, target=target or None)
    tok = m.tokenizer
    pos_labels, sites = token_labels(tok, p.tokens), site_labels(lens.hooks)
    prob, rank = lens.target_prob[0], lens.target_rank[0]  # (site, pos)
    top_t, top_p = lens.topk_tokens[0], lens.topk_probs[0]  # (site, pos, k)
    words = np.vectorize(lambda t: repr(tok.decode([int(t)])))(top_t)
    tracked = [repr(tok.decode([int(t)])) if t >= 0 else "none" for t in lens.target[0]]
    text = np.array(
        [
            [
                f"{tracked[j]}: rank {rank[i, j]}<br>top {k}: "
                + ", ".join(f"{w} {q:.3f}" for w, q in zip(words[i, j], top_p[i, j]))
                for j in range(prob.shape[1])
            ]
            for i in range(prob.shape[0])
        ]
    )
    what = f"P({target!r})" if target else "P(next token)"
    fig = heatmap(
        prob,
        pos_labels,
        sites,
        "position",
        "site",
        f"Logit lens: {what} by site and position",
        value_name="probability",
        colorscale="Viridis",
        zmid=None,
        text=text,
    )
    coords = {"site": lens.hooks, "pos": pos_labels}
    table = long_table(prob, ("site", "pos"), coords, "target_prob")
    table["target_rank"] = rank.ravel()
    table["target"] = np.tile(lens.target[0], len(sites))
    for j in range(k):
        table[f"top{j + 1}_token"] = top_t[..., j].ravel()
        table[f"top{j + 1}_prob"] = top_p[..., j].ravel()
    show_figure(fig, table, "logit_lens")
    st.caption(
        "Each residual site decoded through the final LayerNorm and the unembedding (`actstore analyze "
        "logit-lens` on the prompt cached as one row). Hover a cell for the top tokens and the target's rank."
    )
    ranks = np.where(rank >= 0, rank, np.nan)  # the last position has no next token
    figr = heatmap(
        ranks,
        pos_labels,
        sites,
        "position",
        "site",
        f"Rank of {repr(target) if target else 'the next token'} (0 = top-1)",
        value_name="rank",
        colorscale="Viridis_r",
        zmid=None,
    )
    show_figure(figr, long_table(rank, ("site", "pos"), coords, "target_rank"), "logit_lens_rank")
