"""What the analyses share: the store's model reloaded and checked, single-token
answers, the sites of a kind, and results saved under results/analysis/<name>/."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, StoreMismatchError
from ..model_info import check_identity
from ..models import LoadedModel, ModelLike, as_loaded
from ..store import ActivationStore, ResultWriter, SiteMeta

__all__ = [
    "model_for",
    "single_token",
    "sites_with",
    "result_writer",
    "save_result",
    "layer_head_grid",
]


def model_for(
    store: ActivationStore, name: ModelLike | None = None, device: str | None = "auto"
) -> LoadedModel:
    """Load the store's model (or ``name``), or take the model passed (a TransformerBridge
    in memory, a LoadedModel), and check its weights are the store's."""
    meta = store.metadata["model"]
    given = name if name is not None else meta["name"]
    by_name = isinstance(given, str)
    model = as_loaded(
        given, meta["dtype"] if by_name else None, device, meta.get("revision") if by_name else None
    )
    diffs = check_identity(meta, model.info.to_dict())
    if diffs:
        raise StoreMismatchError(
            f"Model '{model.info.name}' has other weights than the store's ('{store.path}': {'; '.join(diffs)}); "
            "pass --model with the model the store was made with"
            + (
                " (it was cached from a model in memory: pass that object, or the folder actstore.models.save_model "
                "wrote it to)."
                if meta.get("source") == "in-memory"
                else "."
            )
        )
    return model


def single_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ConfigError(
            f"'{text}' is {len(ids)} tokens ({ids}); pass a single token, e.g. ' Mary' with its leading space."
        )
    return int(ids[0])


def sites_with(store: ActivationStore, suffix: str) -> list[SiteMeta]:
    return [s for s in store.meta.sites if s.hook.startswith("blocks.") and s.hook.endswith(suffix)]


def result_writer(store: ActivationStore, name: str) -> ResultWriter:
    """The writer of results/analysis/<name> (a rerun replaces the earlier result whole).
    Made before the analysis runs, it refuses a store that cannot be written first."""
    return ResultWriter.for_store(
        store,
        f"analysis/{name}",
        replace=True,
        unwritable_fix="pass --no-save to analyse without saving, or copy the store to a "
        "folder you can write",
    )


def save_result(
    store: ActivationStore,
    name: str,
    arrays: dict[str, tuple[np.ndarray, Sequence[str]]],
    attrs: dict[str, Any],
    out: ResultWriter | None = None,
) -> list[str]:
    """Write each array to results/analysis/<name>/<key> with its dimension names, through
    ``out`` (default: :func:`result_writer`)."""
    with out if out is not None else result_writer(store, name) as out:
        for key, (data, dims) in arrays.items():
            out.write(key, data, dims, attrs)
    return [f"results/analysis/{name}/{key}" for key in arrays]


def layer_head_grid(store: ActivationStore) -> np.ndarray:
    m = store.meta.model
    return np.full((m.n_layers, m.n_heads), np.nan)
