"""Direct logit attribution at the prompt's last token (actstore.analysis.
direct_logit_attribution on its one-row store): each head and each MLP on
logit(answer) - logit(wrong)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from .. import state
from ..figures import heatmap, long_table, show_figure
from ..prompt_data import default_prompt, prompt_dla

TITLE = "Direct logit attribution"
SECTION = "Prompt"


def render() -> None:
    st.header("Direct logit attribution")
    m, p = state.model_and_prompt()
    d = default_prompt(m.info.name)
    left, right = st.columns(2)
    answer = left.text_input(
        "Answer token (with its leading space)", value=d.answer, key="dla-answer"
    )
    wrong = right.text_input(
        "Wrong token (empty: the answer's logit alone)", value=d.wrong, key="dla-wrong"
    )
    res = prompt_dla(m, p, answer, wrong or None)
    grid = np.concatenate([res.heads[0], res.mlp[0][:, None]], axis=1)  # (layer, head + MLP)
    cols = [f"H{h}" for h in range(m.info.n_heads)] + ["MLP"]
    metric = f"logit({answer!r}) - logit({wrong!r})" if wrong else f"logit({answer!r})"
    fig = heatmap(
        grid,
        cols,
        list(range(m.info.n_layers)),
        "component",
        "layer",
        f"Direct logit attribution to {metric} at position {res.positions[0]}",
        value_name="attribution",
    )
    show_figure(
        fig, long_table(grid, ("layer", "component"), {"component": cols}, "attribution"), "dla"
    )
    total = float(np.nansum(grid))
    st.caption(
        f"Sum over heads and MLPs: {total:.4f} (the rest of {metric} comes from the embeddings and the "
        "attention biases). Each output is centred and divided by the final LayerNorm's scale, as "
        "TransformerLens's apply_ln_to_stack (`actstore analyze dla` on the prompt cached as one row)."
    )
