"""Attention patterns of the prompt, per layer and head, as cached by actstore
(blocks.L.attn.hook_pattern of the prompt's one-row store), with token labels."""

from __future__ import annotations

import streamlit as st

from .. import state
from ..figures import downloads, heatmap, long_table, show_figure
from ..prompt_data import attention_patterns, token_labels

TITLE = "Attention"
SECTION = "Prompt"


def render() -> None:
    st.header("Attention patterns")
    m, p = state.model_and_prompt()
    patterns = attention_patterns(p)  # (layer, head, query_pos, key_pos)
    labels = token_labels(m.tokenizer, p.tokens)
    left, right = st.columns(2)
    layer = int(left.selectbox("Layer", range(m.info.n_layers), key="attn-layer"))
    head = int(right.selectbox("Head", range(m.info.n_heads), key="attn-head"))
    fig = heatmap(
        patterns[layer, head],
        labels,
        labels,
        "key (attended to)",
        "query",
        f"Attention of head {layer}.{head}",
        value_name="attention",
        colorscale="Blues",
        zmid=None,
    )
    table = long_table(
        patterns[layer, head],
        ("query_pos", "key_pos"),
        {"query_pos": labels, "key_pos": labels},
        "attention",
    )
    show_figure(fig, table, f"attention_{layer}.{head}", key="attention")
    with st.expander("Every head of every layer (CSV / JSON)"):
        dims = ("layer", "head", "query_pos", "key_pos")
        downloads(
            long_table(patterns, dims, {"query_pos": labels, "key_pos": labels}, "attention"),
            "attention_all",
        )
