"""The clean run's activations for a sweep: from a TransformerLens ActivationCache (or
any mapping of hook name -> tensor), or from an actstore store and the rows holding the
clean prompts (read from disk one hook at a time, the store's model checked)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import ConfigError, StoreMismatchError
from ..model_protocol import HookedModel
from ..models import bridge_dtype
from ..sites import Site

__all__ = ["CleanValues", "CleanSource", "check_store_model", "store_rows"]

_PATTERN_HOOKS = ("hook_pattern", "hook_attn_scores")  # (batch, head, query_pos, key_pos)


class CleanValues(Protocol):
    """What a sweep reads of the clean run: the values its setter takes, by hook name
    (a :class:`CleanSource`; direct path patching passes each source's residual write)."""

    def __getitem__(self, hook: str) -> torch.Tensor: ...


class CleanSource:
    """The clean run's activations by hook name, from a TransformerLens ActivationCache
    (or any mapping of hook name -> tensor) or from an actstore ActivationStore and the
    rows that hold the clean prompts (read from disk, one hook at a time)."""

    def __init__(self, clean: Any, model: HookedModel, n_pos: int, batch: int, rows: Any = None):
        from ..store import ActivationStore

        self.model = model
        self.n_pos = n_pos
        self.store: ActivationStore | None = clean if isinstance(clean, ActivationStore) else None
        self.cache = None if self.store is not None else clean
        self.rows: list[int] | None = None
        if self.store is not None:
            self.rows = _parse_rows(rows, self.store, batch)
            check_store_model(self.store, model)
        elif rows is not None:
            raise ConfigError(
                "clean_rows applies only when the clean cache is an ActivationStore; "
                "drop clean_rows, or pass the store as clean_cache."
            )

    def __getitem__(self, hook: str) -> torch.Tensor:
        dtype = bridge_dtype(self.model)
        device = torch.device(self.model.cfg.device)
        if self.store is not None:
            return self._from_store(hook).to(device=device, dtype=dtype)
        assert self.cache is not None  # a clean source is a store or a cache
        act = torch.as_tensor(self.cache[hook]).to(device=device, dtype=dtype)
        n = act.shape[2] if hook.endswith(_PATTERN_HOOKS) else act.shape[1]
        if n != self.n_pos:
            raise ConfigError(
                f"The clean activations of {hook} cover {n} positions but the corrupted prompts have "
                f"{self.n_pos} tokens; clean and corrupted prompts must have the same number of tokens."
            )
        return act

    def _from_store(self, hook: str) -> torch.Tensor:
        store, rows = self.store, self.rows
        assert store is not None and rows is not None
        site = next((s for s in store.meta.sites if s.hook == hook), None)
        if site is None:
            raise StoreMismatchError(
                f"Store '{store.path}' has no activations for {hook}; this sweep reads that hook at every "
                f"swept layer. Cache the clean prompts with e.g. --sites {_all_layers_spec(hook)}, or pass an "
                "ActivationCache from run_with_cache instead."
            )
        if site.heads is not None:
            raise StoreMismatchError(
                f"Store '{store.path}' holds only heads {list(site.heads)} of {hook}; patching needs every head. "
                f"Cache it with --sites {_all_layers_spec(hook)}."
            )
        seq_len = store.layout.seq_len
        if seq_len < self.n_pos:
            raise ConfigError(
                f"Store '{store.path}' has rows of {seq_len} tokens, but the corrupted prompts have "
                f"{self.n_pos}; clean and corrupted prompts must have the same number of tokens."
            )
        parts = []
        for a, b in _runs(rows):  # contiguous runs: store.acts checks the done manifest
            parts.append(store.acts(hook, rows=slice(a, b)))
        order = np.argsort(np.argsort(rows, kind="stable"), kind="stable")
        arr = np.concatenate(parts)[order] if len(parts) > 1 or sorted(rows) != rows else parts[0]
        # keep the first n_pos positions: causal, so a longer (padded) row agrees there
        if hook.endswith(_PATTERN_HOOKS):
            arr = arr[:, :, : self.n_pos, : self.n_pos]
        else:
            arr = arr[:, : self.n_pos]
        return torch.from_numpy(np.ascontiguousarray(arr))


def _runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """[3, 4, 5, 9] -> [(3, 6), (9, 10)] over the sorted rows."""
    out: list[tuple[int, int]] = []
    for r in sorted(rows):
        if out and r == out[-1][1]:
            out[-1] = (out[-1][0], r + 1)
        elif not out or r >= out[-1][1]:
            out.append((r, r + 1))
    return out


def _parse_rows(rows: Any, store: Any, batch: int) -> list[int]:
    if rows is None:
        if store.n_rows != batch:
            raise ConfigError(
                f"Store '{store.path}' has {store.n_rows} rows but the corrupted batch has {batch} "
                "prompts; pass clean_rows=[...] naming the row of each clean prompt."
            )
        rows = range(batch)
    elif isinstance(rows, slice):
        rows = range(*rows.indices(store.n_rows))
    out = [int(r) for r in rows]
    if len(out) != batch:
        raise ConfigError(
            f"clean_rows names {len(out)} rows but the corrupted batch has {batch} prompts; "
            "give one store row per corrupted prompt, in the same order."
        )
    bad = [r for r in out if not 0 <= r < store.n_rows]
    if bad:
        raise ConfigError(
            f"clean_rows {bad[:5]} are outside store '{store.path}' (rows 0..{store.n_rows - 1})."
        )
    return out


def _all_layers_spec(hook: str) -> str:
    """The --sites spec that caches ``hook``'s kind at every layer (``z:all``), or the hook name."""
    site = Site.from_hook(hook)
    return hook if site.short is None else site.short if site.layer is None else f"{site.short}:all"


_FINGERPRINTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def check_store_model(store: Any, model: HookedModel) -> None:
    """Raise StoreMismatchError unless ``store`` was cached with this model's weights."""
    from ..model_info import check_identity
    from ..models import fingerprint

    if model not in _FINGERPRINTS:
        _FINGERPRINTS[model] = fingerprint(model.original_model)
    cfg = model.cfg
    info = dict(
        fingerprint=_FINGERPRINTS[model],
        dtype=str(bridge_dtype(model)).removeprefix("torch."),
        n_layers=int(cfg.n_layers),
        d_model=int(cfg.d_model),
        n_heads=int(cfg.n_heads),
        d_head=int(cfg.d_head),
        n_ctx=int(cfg.n_ctx),
    )
    diffs = check_identity(store.meta.model.to_dict(), info)
    if diffs:
        raise StoreMismatchError(
            f"Store '{store.path}' was cached with another model ('{store.meta.model.name}'): "
            f"{'; '.join(diffs)}. Pass a store cached with this model (same weights and dtype), "
            "or run the clean prompts through this model instead (run_with_cache, or omit --store)."
        )


def store_rows(store: Any, clean: torch.Tensor, fix: str | None = None) -> list[int]:
    """The row of ``store`` (an ActivationStore) holding each clean prompt (``clean``: (pair, pos),
    BOS + tokens, possibly padded); StoreMismatchError naming the fix where one is missing
    (``fix``: the caller's, e.g. a complete cache command)."""
    n_pos = clean.shape[1]
    if store.layout.seq_len < n_pos:
        raise StoreMismatchError(
            f"Store '{store.path}' has rows of {store.layout.seq_len} tokens; the prompts have "
            f"{n_pos}. "
            + (fix or f"Cache the clean prompts with --packing document --seq-len {n_pos}.")
        )
    tokens, mask = store.tokens(), store.mask()
    real = mask[:, :n_pos].all(1) & (~mask[:, n_pos] if mask.shape[1] > n_pos else True)
    where = {tuple(t[:n_pos].tolist()): r for r, t in enumerate(tokens) if real[r]}
    rows = [where.get(tuple(c.tolist())) for c in clean]
    missing = [i for i, r in enumerate(rows) if r is None]
    if missing:
        raise StoreMismatchError(
            f"Store '{store.path}' does not hold the clean prompt of pair {missing[0] + 1} ({len(missing)} of "
            f"{len(rows)} missing). "
            + (
                fix
                or "Give a new --store path (it is then cached from the clean prompts), "
                f"or cache them yourself: actstore cache STORE --model M --dataset clean.txt "
                f"--packing document --seq-len {n_pos}."
            )
        )
    return [int(r) for r in rows if r is not None]  # none is missing
