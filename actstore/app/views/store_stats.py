"""Per-site statistics of the chosen store, from its exact merged statistics (count, mean
and M2 per feature over every stored token): the RMS norm, the norm of the mean and the
total variance of each site by layer, and the variance of each feature of one site."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from .. import state
from ..figures import downloads, heatmap, long_table, show_figure
from ..store_data import SiteStats, feature_variance, site_stats

TITLE = "Store statistics"
SECTION = "Store"

MEASURES = {
    "rms_norm": "RMS norm sqrt(E|x|²)",
    "total_var": "total variance E|x - mean|²",
    "mean_norm": "norm of the mean |E x|",
}


def by_layer(stats: list[SiteStats], measure: str) -> go.Figure:
    """One line per kind of site (resid_post, z, ...) over the layers."""
    fig = go.Figure()
    for kind in dict.fromkeys(s.kind for s in stats if s.layer is not None):
        rows = [s for s in stats if s.kind == kind and s.layer is not None]
        fig.add_trace(
            go.Scatter(
                x=[s.layer for s in rows],
                y=[getattr(s, measure) for s in rows],
                name=kind,
                mode="lines+markers",
                customdata=[[s.hook, s.count] for s in rows],
                hovertemplate="%{customdata[0]}<br>layer %{x}<br>"
                + measure
                + " %{y:.5g}<br>tokens %{customdata[1]}<extra></extra>",
            )
        )
    fig.update_layout(
        title=f"{MEASURES[measure]} by layer",
        xaxis_title="layer",
        yaxis_title=measure,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    fig.update_xaxes(dtick=1)
    return fig


def render() -> None:
    st.header("Store statistics")
    store = state.current_store()
    stats = site_stats(store)
    if not stats:
        st.info("This store holds only attention patterns, which have no per-feature statistics.")
        return
    st.caption(
        f"Exact statistics over the {stats[0].count:,} stored tokens of the done rows of {store.path} "
        "(merged per shard with Chan's formula when the store was written; no activation is read here)."
    )
    table = pd.DataFrame([dataclasses.asdict(s) for s in stats])
    # a list with no None: never None
    measure: str = st.selectbox(
        "Measure", list(MEASURES), format_func=MEASURES.__getitem__, key="stats-measure"
    )
    if any(s.layer is not None for s in stats):
        show_figure(by_layer(stats, measure), table, f"site-stats-{measure}", key="stats-by-layer")
    st.dataframe(table, hide_index=True, key="stats-table")
    if not any(s.layer is not None for s in stats):
        downloads(table, "site-stats", key="stats-by-layer")

    st.subheader("Variance of each feature")
    hook = st.selectbox("Site", [s.hook for s in stats], key="stats-site")
    var, dims = feature_variance(store, hook)
    name = f"feature-variance-{hook}"
    if var.ndim == 2:
        fig = heatmap(
            var,
            list(range(var.shape[1])),
            list(range(var.shape[0])),
            dims[1],
            dims[0],
            f"Variance of each feature of {hook}",
            "variance",
            colorscale="Viridis",
            zmid=None,
        )
    else:
        flat = var.reshape(-1)
        fig = go.Figure(
            go.Bar(
                x=np.arange(len(flat)),
                y=flat,
                hovertemplate=(dims[0] if dims else "feature")
                + " %{x}<br>variance %{y:.5g}<extra></extra>",
            )
        )
        fig.update_layout(
            title=f"Variance of each feature of {hook}",
            xaxis_title=dims[0] if dims else "feature",
            yaxis_title="variance",
            margin={"l": 10, "r": 10, "t": 50, "b": 10},
        )
        var, dims = flat, dims[:1] or ("feature",)
    show_figure(fig, long_table(var, dims, name="variance"), name, key="stats-features")
