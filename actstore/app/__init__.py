"""The interactive explorer (`actstore app`, the optional extra ``actstore[app]``): a
Streamlit app over a model and stores. Prompt pages analyse a typed prompt with actstore's
own functions (the prompt is cached into a one-row store and the store analyses run on it);
store pages read stores lazily. Computation lives in plain modules (prompt_data.py, ...)
with no Streamlit; views/ renders them; figures.py shows every figure with its downloads."""

from ..launch import APP_MAIN as MAIN  # one definition, which `actstore app` reads
from ..launch import MODEL_ENV, STORES_ENV

__all__ = ["MAIN", "MODEL_ENV", "STORES_ENV"]
