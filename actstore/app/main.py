"""The Streamlit script of `actstore app`: the shared sidebar, then the page chosen in the
navigation (views/ holds one module per page; a folder named pages/ beside this script
would be taken by Streamlit for old-style page scripts). Serve it with `actstore app`;
tests run :func:`app` through AppTest."""

from __future__ import annotations

import streamlit as st

from actstore.app.state import guarded, sidebar
from actstore.app.views import SECTIONS, discover

__all__ = ["app"]


def app() -> None:
    """One run of the app: page config, navigation over the page registry, sidebar, page."""
    # no page_icon: a material one is fetched online
    st.set_page_config(page_title="actstore explorer", layout="wide")
    pages = discover()
    nav = {
        section: [
            st.Page(guarded(p.render), title=p.title, url_path=p.name)
            for p in pages
            if p.section == section
        ]
        for section in SECTIONS
    }
    page = st.navigation({s: ps for s, ps in nav.items() if ps})
    sidebar()
    page.run()


if __name__ == "__main__":  # how Streamlit runs its script
    app()
