"""Induction heads on repeated random tokens (actstore.analysis.induction_scores on a
store of `repeated-random:HALF_LEN:SEED` rows): each head's induction, previous-token or
duplicate-token score, and the loss by position."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from .. import state
from ..figures import heatmap, long_table, show_figure
from ..prompt_data import prompt_induction

TITLE = "Induction"
SECTION = "Prompt"
SCORES = {
    "induction": "induction (q -> q - half + 1)",
    "prev_token": "previous token (q -> q - 1)",
    "duplicate": "duplicate token (q -> q - half)",
}


def render() -> None:
    st.header("Induction heads")
    m = state.model()
    a, b, c = st.columns(3)
    half = int(
        a.number_input(
            "Half length",
            min_value=1,
            max_value=(m.info.n_ctx - 1) // 2,
            value=min(20, (m.info.n_ctx - 1) // 2),
            key="ind-half",
        )
    )
    n_rows = int(b.number_input("Rows", min_value=1, max_value=512, value=16, key="ind-rows"))
    seed = int(c.number_input("Seed", min_value=0, value=0, key="ind-seed"))
    kind = st.radio("Score", list(SCORES), format_func=SCORES.get, horizontal=True, key="ind-kind")
    res = prompt_induction(state.repeated(m, half, n_rows, seed))
    scores = getattr(res, kind)  # (layer, head)
    fig = heatmap(
        scores,
        list(range(m.info.n_heads)),
        list(range(m.info.n_layers)),
        "head",
        "layer",
        f"{SCORES[kind]} score over {n_rows} rows of BOS + {half} random tokens twice",
        value_name="score",
        colorscale="Viridis",
        zmid=None,
    )
    show_figure(
        fig, long_table(scores, ("layer", "head"), name=kind), f"induction_{kind}", key="induction"
    )
    if res.loss_by_pos is not None:
        pos = np.arange(len(res.loss_by_pos))
        line = go.Figure(
            go.Scatter(
                x=pos,
                y=res.loss_by_pos,
                mode="lines+markers",
                hovertemplate="predicting token %{x} + 1<br>loss %{y:.4f}<extra></extra>",
            )
        )
        line.add_vline(x=half - 0.5, line_dash="dash", annotation_text="second half")
        line.update_layout(
            title="Loss by position", xaxis_title="position", yaxis_title="mean loss (nats)"
        )
        show_figure(line, long_table(res.loss_by_pos, ("pos",), name="loss"), "induction_loss")
        first, second = res.loss_halves or (float("nan"), float("nan"))  # loss_by_pos is set
        st.caption(
            f"Mean loss on the first half {first:.3f}, on the repeated half {second:.3f} nats."
        )
