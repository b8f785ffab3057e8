"""`actstore info` as a page: the model, corpus, layout, sites and provenance of the chosen
store (the CLI's own :func:`actstore.store.info.info_text`), its rows done, and its sites
as a table. Reads the store's metadata and its done manifest only."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from .. import state
from ..figures import downloads
from ..store_data import info_json, info_text, sites_table

TITLE = "Store info"
SECTION = "Store"


def render() -> None:
    st.header("Store info")
    store = state.current_store()
    done, n = store.rows_done, store.n_rows
    st.progress(
        done / max(n, 1), text=f"{done} of {n} rows done" + ("" if done == n else " (incomplete)")
    )
    app_model = str(st.session_state.get("model", "")).strip()
    if app_model and app_model != store.meta.model.name:
        st.caption(
            f"This store was made with {store.meta.model.name}; the app's model is {app_model}. The store "
            "pages read the store alone and do not run the model."
        )
    st.code(info_text(store), language=None, wrap_lines=True)
    st.subheader("Sites")
    table = pd.DataFrame(sites_table(store))
    st.dataframe(table, hide_index=True, key="store-info-sites")
    downloads(table, "store-sites", key="store-info-sites")
    st.download_button(
        "Metadata (actstore info --json)",
        json.dumps(info_json(store), indent=2),
        file_name="store-info.json",
        mime="application/json",
        on_click="ignore",
        icon=":material/download:",
        key="store-info-json",
    )
