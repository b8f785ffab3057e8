"""Activation patching of a clean/corrupted pair (typed, or a built-in task): resid_pre
(layer x position), head (layer x head) and edge patching heatmaps, and attribution
against exact as a scatter. The numbers are actstore.app.patching_data's (the library's
sweeps, attribution patching, exact edge patching and EAP), cached per model and pairs."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from ...circuits.graph import Graph
from ...families import adapter_for
from ...models import LoadedModel
from .. import patching_data as data
from .. import state
from ..figures import heatmap, long_table, show_figure

TITLE = "Patching"
SECTION = "Prompt"

VALUE = "normalised logit diff"  # 0 = the corrupted run, 1 = the clean run
EDGE_CHUNK = 256  # edges per cached call (and per step of the progress bar), at least
WEBGL_POINTS = 5000  # scatter traces with more points are drawn with WebGL
TOP = 30  # edges listed


@st.cache_data(
    show_spinner="Patching resid_pre and every head (exact and attribution) ...", max_entries=32
)
def _sweeps(_model: LoadedModel, name: str, fingerprint: str, records: str) -> data.SweepResults:
    return data.run_sweeps(_model.bridge, data.tokenize(json.loads(records), _model.tokenizer))


@st.cache_data(show_spinner=False, max_entries=1024)
def _exact_chunk(
    _model: LoadedModel, name: str, fingerprint: str, records: str, start: int, stop: int
) -> np.ndarray:
    pairs = data.tokenize(json.loads(records), _model.tokenizer)
    return data.exact_edges(_model.bridge, pairs, np.arange(start, stop))


@st.cache_data(show_spinner="Edge attribution (EAP) ...", max_entries=32)
def _eap(_model: LoadedModel, name: str, fingerprint: str, records: str) -> np.ndarray:
    return data.eap_edges(_model.bridge, data.tokenize(json.loads(records), _model.tokenizer))


def _remembered(defaults: dict[str, Any]) -> None:
    """Give the page's widgets their values: as last chosen (Streamlit forgets a widget's
    value while another page shows, so each change is also kept under '_saved-<key>' by
    :func:`_keep`), else ``defaults``. Values are set here only, never as widget arguments."""
    ss = st.session_state
    for key, value in defaults.items():
        ss[key] = ss.get(f"_saved-{key}", value)


def _keep(key: str) -> None:
    st.session_state[f"_saved-{key}"] = st.session_state[key]


def _kept(key: str) -> dict[str, Any]:
    """The widget arguments that keep its value across pages."""
    return {"key": key, "on_change": _keep, "args": (key,)}


def _records(m: Any) -> tuple[list[dict[str, Any]], str]:
    """The pairs chosen on the page, and where they come from."""
    default = data.default_task(m.info.name)
    # the typed pair starts as the task's first pair
    first = data.task_records(default, 1, 0, m.tokenizer)[0]
    defaults = {
        "patch-source": "Built-in task",
        "patch-task": default,
        "patch-n": 8,
        "patch-seed": 0,
        **{f"patch-{k}": first[k] for k in ("clean", "corrupted", "answer", "wrong")},
    }
    _remembered(defaults)
    source = st.radio(
        "Prompt pairs", ["Built-in task", "Typed pair"], horizontal=True, **_kept("patch-source")
    )
    if source == "Built-in task":
        left, mid, right = st.columns([3, 1, 1])
        task = left.selectbox(
            "Task",
            list(data.TASK_CHOICES),
            **_kept("patch-task"),
            help="; ".join(f"{k}: {v}" for k, v in data.TASK_CHOICES.items()),
        )
        n = int(mid.number_input("Pairs", min_value=1, max_value=64, **_kept("patch-n")))
        seed = int(right.number_input("Seed", min_value=0, **_kept("patch-seed")))
        st.caption(data.TASK_CHOICES[task])
        return data.task_records(task, n, seed, m.tokenizer), f"task {task}"
    left, right = st.columns(2)
    clean = left.text_input("Clean prompt", **_kept("patch-clean"))
    corrupted = right.text_input("Corrupted prompt (same token length)", **_kept("patch-corrupted"))
    answer = left.text_input("Answer (one token; mind the leading space)", **_kept("patch-answer"))
    wrong = right.text_input("Wrong answer (one token)", **_kept("patch-wrong"))
    return [data.typed_record(clean, corrupted, answer, wrong)], "typed pair"


def _sweep_figures(res: data.SweepResults, labels: list[str], n_layers: int) -> None:
    layers = list(range(n_layers))
    resid = res.exact["resid_pre"]
    show_figure(
        heatmap(resid, labels, layers, "position", "layer", "resid_pre patching (exact)", VALUE),
        long_table(resid, ["layer", "pos"], {"pos": labels}, VALUE),
        "patching resid_pre",
        key="patch-resid_pre",
    )
    _head_grid(
        res.exact["attn_head_out_all_pos"],
        "head patching, output at every position (exact)",
        "patching heads",
        "patch-heads",
    )


def _head_grid(values: np.ndarray, title: str, caption: str, key: str) -> None:
    """A (layer, head) grid of scores: its heatmap and its long table."""
    n_layers, n_heads = values.shape
    show_figure(
        heatmap(values, list(range(n_heads)), list(range(n_layers)), "head", "layer", title, VALUE),
        long_table(values, ["layer", "head"], name=VALUE),
        caption,
        key=key,
    )


def _edges(m: Any, key: tuple[str, str, str]) -> data.EdgeResults | None:
    """Exact edge patching (cached a chunk at a time, with a progress bar) and EAP; for a
    graph above AUTO_EDGE_LIMIT edges only once asked."""
    graph = Graph.from_model(m.bridge)
    ss = st.session_state
    if graph.n_edges > data.AUTO_EDGE_LIMIT and ss.get("patch-edges-for") != key:
        st.info(
            f"{m.info.name} has {graph.n_edges:,} edges; exact edge patching runs one patched forward per edge "
            "(batched), which takes a while on this model."
        )
        if not st.button(
            f"Run exact edge patching ({graph.n_edges:,} edges)", key="patch-edges-run"
        ):
            return None
        ss["patch-edges-for"] = key
    chunks = data.edge_chunks(graph, max(EDGE_CHUNK, graph.n_edges // 100))
    bar = st.progress(0.0, text="exact edge patching") if len(chunks) > 1 else None
    parts = []
    for ids in chunks:
        parts.append(_exact_chunk(m, *key, int(ids[0]), int(ids[-1]) + 1))
        if bar is not None:
            done = int(ids[-1]) + 1
            bar.progress(
                done / graph.n_edges,
                text=f"exact edge patching: {done:,} of {graph.n_edges:,} edges",
            )
    if bar is not None:
        bar.empty()
    return data.edge_results(graph, np.concatenate(parts), _eap(m, *key))


def _edge_figures(res: data.EdgeResults) -> None:
    g = res.graph
    table = pd.DataFrame(
        {
            "edge": g.names,
            "src": [g.upstream[i].name for i in g.src],
            "dst": [g.downstream[j].name for j in g.dst],
            "exact": res.exact,
            "eap": res.eap,
        }
    )
    if g.n_edges <= data.AUTO_EDGE_LIMIT:
        rows, cols, grid = data.edge_matrix(g, res.exact)
        show_figure(
            heatmap(
                grid,
                cols,
                rows,
                "downstream input",
                "upstream node",
                "edge patching (exact), one cell per edge",
                VALUE,
            ),
            table,
            "patching edges",
            key="patch-edges",
        )
    else:  # too many cells to read: each head's outgoing edges summed, and the top edges
        _head_grid(
            data.head_summary(g, res.exact),
            "edge patching (exact): sum over each head's outgoing edges",
            "patching edges by head",
            "patch-edges-heads",
        )
    st.caption(
        f"The {TOP} edges of largest |exact score| (of {g.n_edges:,}); the full table is in the downloads."
    )
    st.dataframe(
        pd.DataFrame(data.top_edges(g, res.exact, TOP, res.eap)),
        hide_index=True,
        key="patch-top-edges",
    )


def _scatter(sweeps: data.SweepResults, edges: data.EdgeResults | None, labels: list[str]) -> None:
    fig, tables = go.Figure(), []
    parts: list[tuple[str, list[str], np.ndarray, np.ndarray, Any]] = []
    cells = {
        "resid_pre": [
            f"L{la} {labels[p]}" for la, p in np.ndindex(*sweeps.exact["resid_pre"].shape)
        ],
        "attn_head_out_all_pos": [
            f"L{la} H{h}" for la, h in np.ndindex(*sweeps.exact["attn_head_out_all_pos"].shape)
        ],
    }
    for name in data.SWEEP_KINDS:
        parts.append(
            (
                name,
                cells[name],
                sweeps.exact[name].ravel(),
                sweeps.attribution[name].ravel(),
                sweeps.correlation[name]["pearson"],
            )
        )
    if edges is not None:
        parts.append(
            (
                "edges (EAP)",
                list(edges.graph.names),
                edges.exact,
                edges.eap,
                edges.correlation["pearson"],
            )
        )
    for name, text, x, y, r in parts:
        r_text = "n/a" if r is None else f"{r:.3f}"
        kind = go.Scattergl if len(x) > WEBGL_POINTS else go.Scatter
        fig.add_trace(
            kind(
                x=x,
                y=y,
                mode="markers",
                name=f"{name} (r = {r_text})",
                text=text,
                hovertemplate="%{text}<br>exact %{x:.4g}<br>attribution %{y:.4g}<extra></extra>",
            )
        )
        tables.append(pd.DataFrame({"sweep": name, "cell": text, "exact": x, "attribution": y}))
    values = np.concatenate([np.concatenate([p[2], p[3]]) for p in parts])
    lo, hi = float(values.min()), float(values.max())
    fig.add_trace(
        go.Scatter(
            x=[lo, hi],
            y=[lo, hi],
            mode="lines",
            name="y = x",
            line={"dash": "dash", "color": "grey"},
            hoverinfo="skip",
        )
    )
    fig.update_layout(
        title="attribution against exact patching",
        xaxis_title=f"exact ({VALUE})",
        yaxis_title=f"attribution ({VALUE})",
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
    )
    show_figure(
        fig,
        pd.concat(tables, ignore_index=True),
        "patching attribution vs exact",
        key="patch-scatter",
    )


def render() -> None:
    st.header("Activation patching")
    m = state.model()
    records, source = _records(m)
    # the library's checks (state.guarded shows their errors)
    pairs = data.tokenize(records, m.tokenizer, source)
    key = (m.info.name, m.info.fingerprint, json.dumps(records, sort_keys=True))
    res = _sweeps(m, *key)
    labels = data.position_labels(pairs, m.tokenizer)
    n_pairs = len(records)
    st.caption(
        f"{m.info.name}, {n_pairs} pair{'s' if n_pairs != 1 else ''} of {pairs.clean.shape[1]} tokens (with "
        f"BOS); logit difference answer - wrong at the last position, clean {res.clean_logit_diff.mean():.3f}, "
        f"corrupted {res.corrupted_logit_diff.mean():.3f} (means over pairs). Every value is normalised: "
        "0 = the corrupted run, 1 = the clean run; positions are labelled with the first pair's tokens "
        "(clean→corrupted where they differ)."
    )
    _sweep_figures(res, labels, int(m.bridge.cfg.n_layers))
    st.subheader("Edge patching")
    why = adapter_for(m.bridge, "The patching page").edge_graph_problem(m.bridge)
    edges = None
    if why:  # a family whose edges the circuit graph does not describe (the sweeps above still run)
        st.info(f"Edge patching does not run on {m.info.name}: {why}. The sweeps above do.")
    else:
        edges = _edges(m, key)
    if edges is not None:
        _edge_figures(edges)
    st.subheader("Attribution against exact")
    _scatter(res, edges, labels)
