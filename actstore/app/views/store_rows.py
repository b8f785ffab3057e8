"""One row of the chosen store: its tokens, the document and position in it of each, and
the norm of a chosen site's activation at each token. Reads that row only."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from .. import state
from ..figures import show_figure
from ..store_data import RowView, row_view, token_sites

TITLE = "Store rows"
SECTION = "Store"


def norms_figure(v: RowView) -> go.Figure:
    """The norm per position, labelled with the tokens; hover shows the token, its document and the value."""
    labels = [f"{i}: {t!r}" for i, t in enumerate(v.str_tokens)]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=v.norms.tolist(),
            customdata=list(zip(v.str_tokens, v.doc.tolist(), v.doc_pos.tolist())),
            hovertemplate="pos %{x}<br>token %{customdata[0]}<br>doc %{customdata[1]}, doc_pos "
            "%{customdata[2]}<br>norm %{y:.5g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Norm of {v.hook} per token, row {v.row}",
        xaxis_title="pos: token",
        yaxis_title="L2 norm",
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    fig.update_xaxes(type="category", tickangle=-60)
    return fig


def render() -> None:
    st.header("Store rows")
    store = state.current_store()
    sites = token_sites(store)
    if not sites:
        st.info("This store holds only attention patterns: no site has one activation per token.")
        return
    left, right = st.columns([1, 3])
    # per store: their row counts differ
    row = left.number_input(
        "Row",
        min_value=0,
        max_value=store.n_rows - 1,
        value=0,
        step=1,
        key=f"rows-row-{store.path}",
    )
    hook = right.selectbox("Site", sites, key="rows-site")
    v = row_view(store, int(row), hook)
    st.caption(
        f"Row {v.row} of {store.n_rows}: {len(set(v.doc.tolist()))} document(s), "
        f"{int(v.mask.sum())} real tokens of {len(v.mask)}."
    )
    table = pd.DataFrame(v.table())
    show_figure(norms_figure(v), table, f"row-{v.row}-{hook}-norms", key="rows-norms")
    st.dataframe(table, hide_index=True, key="rows-table")
