"""Every figure of the app goes through :func:`show_figure`: an interactive plotly chart
(hover shows the labels and the value; its toolbar downloads a PNG, drawn in the browser)
and buttons that download its numbers as CSV and JSON. :func:`long_table` turns an array
with named dimensions into those numbers; :func:`heatmap` draws a 2-D array with labelled
axes."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

__all__ = ["long_table", "heatmap", "show_figure", "downloads", "table_json"]


def long_table(
    values: np.ndarray,
    dims: Sequence[str],
    coords: Mapping[str, Sequence[Any]] | None = None,
    name: str = "value",
) -> pd.DataFrame:
    """One line per element of ``values``: a column per dimension (its coordinate:
    ``coords[dim]`` if given, else the index) and ``name`` for the value."""
    values = np.asarray(values)
    if values.ndim != len(dims):
        raise ValueError(
            f"values of shape {values.shape} need {values.ndim} dimension names; got {list(dims)}"
        )
    coords = coords or {}
    grids = np.meshgrid(*[np.arange(n) for n in values.shape], indexing="ij")
    cols = {}
    for d, g, n in zip(dims, grids, values.shape):
        c = coords.get(d)
        if c is not None and len(c) != n:
            raise ValueError(f"coordinates of '{d}' have {len(c)} entries for a dimension of {n}")
        cols[d] = np.asarray(c, dtype=object)[g.ravel()] if c is not None else g.ravel()
    cols[name] = values.ravel()
    return pd.DataFrame(cols)


def table_json(table: pd.DataFrame) -> str:
    """The table as a JSON list of records (NaN as null)."""
    return json.dumps(json.loads(table.to_json(orient="records")), indent=1)


def heatmap(
    values: np.ndarray,
    x: Sequence[Any],
    y: Sequence[Any],
    x_title: str,
    y_title: str,
    title: str,
    value_name: str = "value",
    colorscale: str = "RdBu",
    zmid: float | None = 0.0,
    text: np.ndarray | None = None,
) -> go.Figure:
    """A heatmap of ``values`` (y, x) whose hover names both axes and the value (and
    ``text``, a string per cell, where given)."""
    hover = f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>{value_name} %{{z:.4g}}"
    if text is not None:
        hover += "<br>%{text}"
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=[str(v) for v in x],
            y=[str(v) for v in y],
            colorscale=colorscale,
            zmid=zmid,
            text=text,
            hovertemplate=hover + "<extra></extra>",
            colorbar={"title": {"text": value_name}},
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        yaxis_autorange="reversed",
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "figure"


def show_figure(fig: go.Figure, table: pd.DataFrame, name: str, key: str | None = None) -> None:
    """Show ``fig`` (PNG download in its toolbar, named ``name``) and CSV / JSON
    download buttons for ``table``, the figure's numbers."""
    slug = _slug(name)
    key = key or slug
    st.plotly_chart(
        fig,
        key=f"fig-{key}",
        config={
            "displaylogo": False,
            "toImageButtonOptions": {"format": "png", "filename": slug, "scale": 2},
        },
    )
    downloads(table, name, key)


def downloads(table: pd.DataFrame, name: str, key: str | None = None) -> None:
    """CSV and JSON download buttons for ``table`` (files named after ``name``)."""
    slug = _slug(name)
    key = key or slug
    left, right, _ = st.columns([1, 1, 4])
    left.download_button(
        "CSV",
        table.to_csv(index=False),
        file_name=f"{slug}.csv",
        mime="text/csv",
        key=f"csv-{key}",
        on_click="ignore",
        icon=":material/download:",
    )
    right.download_button(
        "JSON",
        table_json(table),
        file_name=f"{slug}.json",
        mime="application/json",
        key=f"json-{key}",
        on_click="ignore",
        icon=":material/download:",
    )
