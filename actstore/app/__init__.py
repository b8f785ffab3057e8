"""The interactive explorer (`actstore app`, the optional extra ``actstore[app]``): a
Streamlit app over a model and stores. Prompt pages analyse a typed prompt with actstore's
own functions (the prompt is cached into a one-row store and the store analyses run on it);
store pages read stores lazily. Computation lives in plain modules (prompt_data.py, ...)
with no Streamlit; views/ renders them; figures.py shows every figure with its downloads."""

from pathlib import Path

MAIN = str(Path(__file__).with_name("main.py"))  # the script Streamlit serves
# `actstore app --model M --store A --store B` hands its choices to the app's sessions in these
MODEL_ENV, STORES_ENV = "ACTSTORE_APP_MODEL", "ACTSTORE_APP_STORES"  # (stores one per line: a URL may hold ":")

__all__ = ["MAIN", "MODEL_ENV", "STORES_ENV"]

