"""What one top floor needs to start another without importing it: the explorer's script,
its opener and the environment variables that carry `actstore app`'s choices. The CLI
(`actstore app`) starts the app as a separate process from these; the app reads them too
(actstore/app/__init__.py re-exports them), so neither imports the other."""

from __future__ import annotations

from pathlib import Path

_APP = Path(__file__).with_name("app")
APP_MAIN = str(_APP / "main.py")  # the script Streamlit serves
# opens a browser once the server answers (standard library only)
APP_OPENER = str(_APP / "opener.py")
# `actstore app --model M --store A --store B` hands its choices to the app's sessions in these
# (stores one per line: a URL may hold ":")
MODEL_ENV, STORES_ENV = (
    "ACTSTORE_APP_MODEL",
    "ACTSTORE_APP_STORES",
)

__all__ = ["APP_MAIN", "APP_OPENER", "MODEL_ENV", "STORES_ENV"]
