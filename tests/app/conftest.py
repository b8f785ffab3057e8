"""The app's fixtures: the demo model loaded once, and AppTest sessions of the whole app
(actstore.app.main.app, headless) opened on a chosen page."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest.importorskip(
    "streamlit", reason="the app tests need the [app] extra: pip install 'actstore[app]'"
)

from streamlit.testing.v1 import AppTest  # noqa: E402

TIMEOUT = (
    180  # seconds per AppTest run: the first run of a session loads the model and caches the prompt
)


@pytest.fixture(scope="session")
def demo_model():
    """actstore-demo loaded as the app loads it (state.load: load_model with defaults)."""
    from actstore.app.state import load

    return load("actstore-demo")


def goto(at: AppTest, page: str) -> AppTest:
    """Switch ``at`` (run at least once) to the page of module ``page`` and run it.
    AppTest.switch_page takes page files; our pages are callables, so this finds the
    page's title among those st.navigation registered."""
    import importlib

    title = importlib.import_module(
        f"actstore.app.views.{page}"
    ).TITLE  # the default page's URL path is ''
    hashes = [h for h, info in at._registered_pages.items() if info.get("page_name") == title]
    if not hashes:
        known = sorted(str(i.get("page_name")) for i in at._registered_pages.values())
        raise AssertionError(f"no page '{page}' in the navigation; registered: {known}")
    at._page_hash = hashes[0]
    return at.run()


@pytest.fixture
def open_app(monkeypatch: pytest.MonkeyPatch) -> Callable[..., AppTest]:
    """open_app(page, model=..., stores=[...], **session_state): a fresh AppTest of the
    app on ``page``, with the sidebar's defaults set as `actstore app` sets them."""
    from actstore.app.state import MODEL_ENV, STORES_ENV

    def make(
        page: str, model: str = "actstore-demo", stores: tuple[str, ...] = (), **state: object
    ) -> AppTest:
        monkeypatch.setenv(MODEL_ENV, model)
        monkeypatch.setenv(STORES_ENV, "\n".join(stores))
        at = AppTest.from_string(
            "from actstore.app.main import app\napp()\n", default_timeout=TIMEOUT
        )
        for key, value in state.items():
            at.session_state[key] = value
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return goto(at, page)

    return make
