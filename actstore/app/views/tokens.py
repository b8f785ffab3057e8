"""The prompt's tokens as the store holds them: position, id, text, doc and doc_pos."""

from __future__ import annotations

import streamlit as st

from .. import state
from ..figures import downloads
from ..prompt_data import token_table

TITLE = "Tokens"
SECTION = "Prompt"


def render() -> None:
    st.header("Tokens")
    m, p = state.model_and_prompt()
    table = token_table(m.tokenizer, p)
    st.caption(
        f"{m.info.name}: BOS + {len(table) - 1} tokens of the prompt, cached as one row (document packing)."
    )
    st.dataframe(table, hide_index=True, key="tokens-table")
    downloads(table, "tokens")
