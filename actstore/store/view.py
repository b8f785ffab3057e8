"""``store[key]``: a lazy, checked view of one of the store's arrays.

    x = store["resid_post", 5]        # or store["resid_post:5"], store["blocks.5.hook_resid_post"]
    x.shape, x.dims, len(x)           # nothing read yet
    x[3], x[0:8, -1], x[[2, 7], :, 0] # numpy-style; the first axis is the row
    np.asarray(store["tokens"])

Every read goes through the store's checks, as ``store.acts`` does: rows whose shard is
not done raise RowsNotDoneError (zarr alone would give the fill value), and a finished
shard that is missing or fails its checksum raises CorruptChunkError. ``view.array`` is
the raw zarr array, for those who want it unchecked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from ..errors import ActStoreError, ConfigError, UnknownSiteError
from ..sites import SHORT_SITES, hook_name, layer_of, parse_sites, split_specs
from .base import StoreLike
from .format import INDEX_ARRAYS, read_checked
from .typed import dimension_names

__all__ = ["ArrayView", "array_name"]


def resolve_sites(store: StoreLike, spec: str | Sequence[str]) -> list[str]:
    """Site specs (``resid_post:all``, ``resid_post:3-5``, hook names) -> the store's hook
    names, in the store's order. ``X:all`` means every layer of X that the store holds;
    a named layer or hook the store lacks is an error that lists what it holds."""
    present = store.sites
    model = store.meta.model
    wanted: set[str] = set()
    for s in split_specs(spec):
        name, _, selectors = s.partition(":")
        if name in SHORT_SITES and selectors == "all":
            template = SHORT_SITES[name]
            got = [
                h
                for h in present
                if layer_of(h) is not None and h == template.format(L=layer_of(h))
            ]
            if not got:
                raise UnknownSiteError(
                    f"Site '{s}': the store holds no {name} hooks. It holds: {', '.join(present)}."
                )
            wanted.update(got)
            continue
        try:
            parsed = parse_sites(s, present, model.n_layers, model.n_heads, model.n_kv_heads)
        except UnknownSiteError as e:
            raise UnknownSiteError(f"{e} This store holds: {', '.join(present)}.") from None
        for site in parsed:
            if site.heads is not None:
                raise ConfigError(
                    f"Site '{s}' selects heads; token-level readers use every stored head of "
                    f"{site.hook}. Pass the hook without '.H'."
                )
            wanted.add(site.hook)
    return [h for h in present if h in wanted]


def _no_such(store: StoreLike, key: Any, why: str = "") -> UnknownSiteError:
    index = [n for n in INDEX_ARRAYS if n in store.expected]
    return UnknownSiteError(
        f"Store '{store.path}' holds no array {key!r}{why}. It holds the sites {', '.join(store.sites)} and the "
        f"index arrays {', '.join(index)}. Index it with a hook name, a site spec such as 'resid_post:5', a "
        "TransformerLens-style key such as store['resid_post', 5], or an index array name."
    )


def array_name(store: StoreLike, key: Any) -> str:
    """The group path of the array ``key`` names: 'acts/<hook>' or an index array."""
    if isinstance(key, tuple) and 1 <= len(key) <= 2 and isinstance(key[0], str):
        try:
            hook = hook_name(key[0], key[1] if len(key) == 2 else None)
        except UnknownSiteError:
            raise _no_such(store, key, f" ('{key[0]}' is not a site name)") from None
    elif isinstance(key, str) and key in INDEX_ARRAYS:
        if key not in store.expected:
            raise _no_such(store, key, " (a store of packed rows has no mask: every token is real)")
        return key
    elif isinstance(key, str) and key in store.sites:
        hook = key
    elif isinstance(key, str):
        try:
            hooks = resolve_sites(store, key)
        except UnknownSiteError:
            raise _no_such(store, key) from None
        except ActStoreError as e:  # e.g. a spec that selects heads
            raise _no_such(store, key, f" ({e})") from None
        if len(hooks) != 1:
            raise _no_such(
                store,
                key,
                f": it names {len(hooks)} sites ({', '.join(hooks)}) and store[...] takes one",
            )
        hook = hooks[0]
    else:
        raise _no_such(store, key)
    if hook not in store.sites:
        raise _no_such(store, key, f" (that is {hook}, which this store does not hold)")
    return f"acts/{hook}"


class ArrayView:
    """A lazy view of one array of a store; indexing reads checked rows (see module doc)."""

    def __init__(self, store: StoreLike, name: str):
        self.store = store
        self.name = name  # 'acts/<hook>' or 'tokens', 'doc', 'doc_pos', 'mask'

    @property
    def array(self) -> zarr.Array:
        """The raw zarr array (no done check)."""
        return self.store.array(self.name)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return self.array.size

    @property
    def nbytes(self) -> int:
        """Bytes of the whole array, uncompressed (as zarr's and numpy's ``nbytes``)."""
        return self.array.nbytes

    @property
    def dims(self) -> tuple[str, ...]:
        return dimension_names(self.array)

    # the zarr array's own description, so code written for store[hook] as a zarr array reads on
    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array.chunks)

    @property
    def shards(self) -> tuple[int, ...] | None:
        return self.array.shards

    @property
    def metadata(self) -> Any:
        return self.array.metadata

    @property
    def attrs(self) -> Any:
        return self.array.attrs

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        shape = ", ".join(f"{d}={n}" for d, n in zip(self.dims, self.shape))
        return f"<ArrayView '{self.name}' of '{self.store.path}' ({shape}) {self.dtype}>"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        """numpy's indexing, the first axis being the row: only the rows asked are read
        (whole rows), then the rest of the index applies to them as numpy would."""
        key = key if isinstance(key, tuple) else (key,)
        if not key or key[0] is Ellipsis:  # x[...], x[..., 0]: every row
            return self._rows(slice(None))[key]
        rows, rest = key[0], key[1:]
        if isinstance(rows, slice):
            a, b, step = rows.indices(len(self))
            block = (
                self._rows(slice(a, max(a, b))) if step == 1 else self._take(np.arange(a, b, step))
            )
            return block[(slice(None), *rest)]
        if isinstance(rows, (int, np.integer)):
            r = int(rows) + (len(self) if int(rows) < 0 else 0)
            if not 0 <= r < len(self):
                raise IndexError(
                    f"Row {int(rows)} is out of range for the {len(self)} rows of '{self.name}'."
                )
            return self._rows(slice(r, r + 1))[(0, *rest)]
        idx = np.asarray(rows)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(
                    f"A boolean row index must have {len(self)} entries; got shape {idx.shape}."
                )
            idx = np.flatnonzero(idx)
        if idx.dtype.kind not in "iu":
            raise IndexError(
                f"Rows must be an int, a slice, an array of row numbers or a boolean mask; got {rows!r}."
            )
        idx = np.where(idx < 0, idx + len(self), idx)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"Rows {rows!r} fall outside the {len(self)} rows of '{self.name}'.")
        uniq = np.unique(idx)  # each row read once; numpy then indexes them as asked
        return self._take(uniq)[(np.searchsorted(uniq, idx), *rest)]

    # --- checked reads ------------------------------------------------------------
    def _rows(self, rows: slice) -> np.ndarray:
        self.store.check_done(rows)
        return read_checked(self.array, rows, self.store.layout, self.store.path)

    def _take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` in that order, read shard by shard (a span of each touched shard)."""
        lay = self.store.layout
        shards = idx // lay.rows_per_shard
        touched = np.unique(shards)
        self.store.check_shards(
            touched, f"{len(idx)} rows ({idx.min()}..{idx.max()})" if len(idx) else "No rows"
        )
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        for k in touched:
            at = np.flatnonzero(shards == k)
            lo, hi = int(idx[at].min()), int(idx[at].max()) + 1
            out[at] = read_checked(self.array, slice(lo, hi), lay, self.store.path)[idx[at] - lo]
        return out
