"""What every page shares: the sidebar (the model, the stores, the prompt), the model
loaded once per process (st.cache_resource), stores opened once (lazily: opening reads
metadata only), the prompt's one-row store cached per (model, prompt), and
:func:`guarded`, which shows an actstore error on the page instead of a traceback.

`actstore app --model M --store A --store B` passes its choices in the environment
(ACTSTORE_APP_MODEL; ACTSTORE_APP_STORES, one per line): they are the sidebar's
defaults, so AppTest and a browser see the same app."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import streamlit as st

from ..errors import ActStoreError, ConfigError
from ..models import LoadedModel, load_model
from ..resources import DEMO_MODEL
from ..store import ActivationStore, open_store
from . import MODEL_ENV, STORES_ENV
from .prompt_data import PromptStore, cache_prompt, default_prompt, repeated_store

__all__ = [
    "MODEL_ENV",
    "STORES_ENV",
    "configured_model",
    "configured_stores",
    "sidebar",
    "model",
    "store_paths",
    "current_store",
    "prompt",
    "prompt_store",
    "model_and_prompt",
    "repeated",
    "guarded",
    "load",
    "open_cached",
]


def configured_model() -> str:
    return os.environ.get(MODEL_ENV) or DEMO_MODEL


def configured_stores() -> list[str]:
    return [p for p in os.environ.get(STORES_ENV, "").splitlines() if p]


def sidebar() -> None:
    """The shared inputs, drawn on every page (so their values survive a page change)."""
    ss = st.session_state
    ss.setdefault("model", configured_model())
    ss.setdefault("stores", "\n".join(configured_stores()))
    ss.setdefault("prompt", default_prompt(ss["model"]).text)
    with st.sidebar:
        st.text_input(
            "Model",
            key="model",
            help="actstore-demo (offline), a hub name such as gpt2, or a local folder",
        )
        st.text_input(
            "Prompt",
            key="prompt",
            help="the prompt the Prompt pages analyse (press Enter to apply)",
        )
        st.text_area("Stores", key="stores", height=80, help="store paths or URLs, one per line")
        paths = store_paths()
        if paths:
            if ss.get("store") not in paths:
                ss["store"] = paths[0]
            st.selectbox("Store", paths, key="store")


@st.cache_resource(show_spinner="Loading the model ...", max_entries=4)
def load(name: str) -> LoadedModel:
    """The model, loaded once per name for the whole server (weights are read-only here)."""
    return load_model(name)


@st.cache_resource(show_spinner="Opening the store ...", max_entries=16)
def open_cached(path: str) -> ActivationStore:
    """The store opened once per path: metadata only, activations are read when drawn."""
    return open_store(path)


def model() -> LoadedModel:
    """The sidebar's model (an error names the fix on the page)."""
    name = st.session_state.get("model", configured_model()).strip()
    if not name:
        raise ConfigError(
            "No model given; type a model in the sidebar (actstore-demo works offline)."
        )
    return load(name)


def store_paths() -> list[str]:
    return [p.strip() for p in st.session_state.get("stores", "").splitlines() if p.strip()]


def current_store() -> ActivationStore:
    """The store chosen in the sidebar; without one, a note on the page and the page stops."""
    path = st.session_state.get("store")
    if not path or path not in store_paths():
        st.info(
            "No store given: type a store's path in the sidebar (or start the app with "
            "`actstore app --store PATH`)."
        )
        st.stop()
    return open_cached(path)


def prompt() -> str:
    return st.session_state.get("prompt", default_prompt(configured_model()).text)


@st.cache_resource(show_spinner="Caching the prompt's activations ...", max_entries=16)
def _prompt_store(_model: LoadedModel, name: str, fingerprint: str, text: str) -> PromptStore:
    return cache_prompt(_model, text)


def prompt_store(m: LoadedModel, text: str) -> PromptStore:
    """The prompt cached through ``m`` (every prompt site, one forward), once per (model, prompt)."""
    return _prompt_store(m, m.info.name, m.info.fingerprint, text)


def model_and_prompt() -> tuple[LoadedModel, PromptStore]:
    """The sidebar's model and its prompt's one-row store: what a prompt page starts from."""
    m = model()
    return m, prompt_store(m, prompt())


@st.cache_resource(show_spinner="Caching repeated random tokens ...", max_entries=8)
def _repeated(
    _model: LoadedModel, name: str, fingerprint: str, half_len: int, n_rows: int, seed: int
) -> PromptStore:
    return repeated_store(_model, half_len, n_rows, seed)


def repeated(m: LoadedModel, half_len: int, n_rows: int, seed: int) -> PromptStore:
    """``n_rows`` rows of repeated-random:HALF_LEN:SEED cached through ``m`` (patterns
    and loss), once per (model, half_len, n_rows, seed)."""
    return _repeated(m, m.info.name, m.info.fingerprint, half_len, n_rows, seed)


def guarded(render: Callable[[], None]) -> Callable[[], None]:
    """``render`` with actstore's errors shown on the page (st.error), not as a traceback."""

    @functools.wraps(render)
    def page() -> None:
        try:
            render()
        except ActStoreError as e:
            st.error(str(e), icon=":material/error:")

    return page
