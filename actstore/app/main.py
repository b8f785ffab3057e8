"""The Streamlit script of `actstore app`: the shared sidebar, then the page chosen in the
navigation (pages/ holds one module per page). Serve it with `actstore app`, which tells
Streamlit that pages/ is not a folder of old-style page scripts (see
:func:`actstore.app.navigation_only`); tests run :func:`app` through AppTest.from_string."""

from __future__ import annotations

import streamlit as st

from actstore.app.pages import SECTIONS, discover
from actstore.app.state import guarded, sidebar

__all__ = ["app"]


def app() -> None:
    """One run of the app: page config, navigation over the page registry, sidebar, page."""
    st.set_page_config(page_title="actstore explorer", layout="wide")  # no page_icon: a material one is fetched online
    pages = discover()
    nav = {section: [st.Page(guarded(p.render), title=p.title, url_path=p.name) for p in pages if p.section == section]
           for section in SECTIONS}
    page = st.navigation({s: ps for s, ps in nav.items() if ps})
    sidebar()
    page.run()


if __name__ == "__main__":  # how Streamlit runs its script
    app()
