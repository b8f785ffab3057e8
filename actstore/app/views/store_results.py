"""Every result under results/ of the chosen store (patching sweeps, probes, analyses), or
of a results group of its own (`actstore patch --out`, `actstore circuit --out`), drawn
from its own arrays with its dims as axes: one axis a bar or line, two a heatmap, every
other dim a slider. Reads only the part drawn (at most store_data.MAX_CELLS values)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from .. import state
from ..figures import downloads, heatmap, long_table, show_figure
from ..store_data import (
    MAX_CELLS,
    ResultArray,
    ResultsSource,
    axis_labels,
    open_results,
    result_slice,
)

TITLE = "Store results"
SECTION = "Store"

_BATCH_DIMS = ("pair", "row", "k")  # drawn on a slider first, when there are other dims to draw


def default_axes(dims: Sequence[str]) -> list[str]:
    """The two dims drawn first (one for a 1-D array): the first ones that are not a batch dim."""
    ranked = [d for d in dims if d not in _BATCH_DIMS] + [d for d in dims if d in _BATCH_DIMS]
    return [d for d in dims if d in ranked[:2]]


def _source() -> ResultsSource:
    other = st.text_input(
        "Results group (optional)",
        key="results-group",
        help="the --out group of `actstore patch` or `actstore circuit`; empty: the sidebar's store",
    )
    return open_results(other.strip()) if other.strip() else open_results(state.current_store())


def _pick(src: ResultsSource) -> ResultArray:
    groups = list(dict.fromkeys(n.rsplit("/", 1)[0] if "/" in n else "" for n in src.names))
    left, right = st.columns(2)
    group = left.selectbox("Result", groups, key="results-result")
    leaves = [n for n in src.names if (n.rsplit("/", 1)[0] if "/" in n else "") == group]
    infos = [src.describe(n) for n in leaves]
    # float grids first
    drawn = sorted(
        range(len(infos)),
        key=lambda j: (
            not infos[j].numeric,
            "float" not in infos[j].dtype,
            len(infos[j].shape) < 2,
        ),
    )
    i = right.selectbox(
        "Array",
        range(len(leaves)),
        index=drawn[0],
        key=f"results-array-{src.path}-{group}",
        format_func=lambda j: f"{leaves[j].rsplit('/', 1)[-1]} ({', '.join(infos[j].dims)})",
    )
    return infos[i]


def _window(key: str, dim: str, n: int, limit: int) -> tuple[int, int]:
    if n <= limit:
        return 0, n
    a, b = st.slider(f"{dim} window", 0, n, (0, limit), key=f"{key}-window-{dim}")
    if b - a > limit or b <= a:
        b = min(n, a + limit) if b > a else min(n, a + 1)
        st.caption(f"{dim}: showing {a}..{b - 1} (at most {limit} values at a time).")
    return a, b


def _labels(src: ResultsSource, info: ResultArray, dim: str, a: int, b: int) -> list[Any]:
    names = axis_labels(src, info.name, dim)
    return list(range(a, b)) if names is None else [f"{i}: {names[i]}" for i in range(a, b)]


def _figure(
    values: np.ndarray, axes: list[str], coords: dict[str, list[Any]], title: str, leaf: str
) -> go.Figure:
    if len(axes) == 2:
        signed = (
            bool(np.nanmin(values) < 0 < np.nanmax(values)) if np.isfinite(values).any() else False
        )
        return heatmap(
            values,
            coords[axes[1]],
            coords[axes[0]],
            axes[1],
            axes[0],
            title,
            leaf,
            colorscale="RdBu" if signed else "Viridis",
            zmid=0.0 if signed else None,
        )
    x = [str(c) for c in coords[axes[0]]]
    hover = f"{axes[0]} %{{x}}<br>{leaf} %{{y:.5g}}<extra></extra>"
    trace = (
        go.Bar(x=x, y=values.tolist(), hovertemplate=hover)
        if len(x) <= 256
        else go.Scatter(x=x, y=values.tolist(), mode="lines", hovertemplate=hover)
    )
    fig = go.Figure(trace)
    fig.update_layout(
        title=title,
        xaxis_title=axes[0],
        yaxis_title=leaf,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    fig.update_xaxes(type="category")
    return fig


def render() -> None:
    st.header("Store results")
    src = _source()
    if not src.names:
        st.info(
            f"'{src.path}' holds no results yet: `actstore probe`, `actstore analyze` and `actstore patch "
            "--out STORE` write theirs under its results/."
        )
        return
    info = _pick(src)
    leaf = info.name.rsplit("/", 1)[-1]
    st.caption(
        f"{info.name}: {info.dtype} ({', '.join(f'{d}={n}' for d, n in zip(info.dims, info.shape))})"
    )
    with st.expander("Attributes"):
        st.json(info.attrs, expanded=False)
    arr = src.array(info.name)
    key = f"results-{src.path}-{info.name}"  # each array's own widgets: shapes differ between arrays and stores
    if not info.shape:
        st.metric(leaf, str(np.asarray(arr[()])))
        return
    axes = (
        [info.dims[0]]
        if not info.numeric
        else st.multiselect(
            "Axes", info.dims, default=default_axes(info.dims), max_selections=2, key=f"{key}-axes"
        )
    )
    if not axes:
        st.info("Pick one or two dims to draw.")
        return
    at = {}
    for d, n in zip(info.dims, info.shape):
        if d not in axes and n > 1:
            at[d] = st.slider(d, 0, n - 1, 0, key=f"{key}-at-{d}")
            names = axis_labels(src, info.name, d)
            if names is not None:
                st.caption(f"{d} {at[d]}: {names[at[d]]}")
    limit = int(MAX_CELLS[len(axes)] ** (1 / len(axes)))
    window = {d: _window(key, d, n, limit) for d, n in zip(info.dims, info.shape) if d in axes}
    values = result_slice(arr, axes, at, window)
    coords = {d: _labels(src, info, d, *window[d]) for d in axes}
    fixed = "".join(f", {d} {i}" for d, i in at.items())
    title = f"{info.name}{fixed}"
    table = long_table(values, axes, coords, name=leaf)
    slug = title.replace(", ", "-").replace(" ", "")
    if not info.numeric:
        st.dataframe(table, hide_index=True, key="results-table")
        downloads(table, slug, key="results-fig")
        return
    show_figure(
        _figure(values.astype(np.float64), axes, coords, title, leaf),
        table,
        slug,
        key="results-fig",
    )
