"""What the store pages show, as plain functions (no streamlit): a store's description,
its per-site statistics, one row, and the arrays of its results. Everything reads
lazily: metadata, the ``done`` manifest, the merged statistics, the chunks of the one
row asked for, and the part of a result shown; never a whole activation array, so a
100 GB store (or one on object storage) opens at once.

    store = actstore.open("acts.zarr")
    site_stats(store)                       # norms and variance of every site, by layer
    row_view(store, 3, "blocks.1.hook_resid_post").norms   # (pos,)
    src = open_results("acts.zarr")         # a store's results/, or a patch/circuit --out group
    result_slice(src.array("patching/resid_pre/normalised"), ("layer", "pos"))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import zarr

from ..errors import ConfigError, RowIndexError, StoreNotFoundError, UnknownSiteError
from ..resources import tokenizer_for
from ..sites import Site
from ..store import ActivationStore
from ..store.format import walk_arrays
from ..store.info import info_text
from ..store.typed import dimension_names

__all__ = [
    "info_text",
    "info_json",
    "sites_table",
    "SiteStats",
    "site_stats",
    "feature_variance",
    "token_sites",
    "RowView",
    "row_view",
    "ResultsSource",
    "ResultArray",
    "open_results",
    "axis_labels",
    "result_slice",
    "MAX_CELLS",
]

# the most values one figure reads and draws, by its number of axes
MAX_CELLS = {
    1: 4096,
    2: 256 * 256,
}


def info_json(store: ActivationStore) -> dict[str, Any]:
    """What ``actstore info --json`` prints: the store's metadata and its rows done."""
    return {**store.metadata, "rows_done": store.rows_done}


def sites_table(store: ActivationStore) -> list[dict[str, Any]]:
    """One entry per site: its hook, layer, kept heads, dims, shape and uncompressed size."""
    item = np.dtype(store.meta.storage_dtype).itemsize
    return [
        {
            "hook": s.hook,
            "layer": s.layer,
            "heads": None if s.heads is None else list(s.heads),
            "dims": ", ".join(s.dims),
            "shape": ", ".join(map(str, s.shape)),
            "MB": round(int(np.prod(s.shape)) * item / 1e6, 3),
        }
        for s in store.meta.sites
    ]


# --- per-site statistics ---------------------------------------------------------------
@dataclass(frozen=True)
class SiteStats:
    """One site's exact statistics over every stored token (from the store's merged
    count, mean and M2): the norm of the mean, the root mean square norm
    sqrt(E|x|^2) and the total variance E|x - mean|^2 (sum of the per-feature variances)."""

    hook: str
    kind: str  # resid_post, z, ... (actstore.sites.Site.kind)
    layer: int | None
    count: int  # tokens
    mean_norm: float
    rms_norm: float
    total_var: float


def site_stats(store: ActivationStore) -> list[SiteStats]:
    """Every site of ``store`` that has statistics (one position axis), in the store's order."""
    out = []
    for s in store.meta.sites:
        if s.dims.count("pos") != 1:
            continue  # attention patterns: no single position axis, no stats
        m = store.stats(s.hook)
        var = m.var
        out.append(
            SiteStats(
                s.hook,
                Site.from_hook(s.hook).kind,
                s.layer,
                m.count,
                float(np.sqrt((m.mean**2).sum())),
                float(np.sqrt((var + m.mean**2).sum())),
                float(var.sum()),
            )
        )
    return out


def feature_variance(store: ActivationStore, hook: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """The variance of each feature of ``hook`` over every stored token (float64) and its
    dimension names, e.g. ((d_model,), ('d_model',)) or ((head, d_head), ('head', 'd_head'))."""
    site = _site(store, hook)
    return store.stats(hook).var, tuple(d for d in site.dims[1:] if d != "pos")


# --- one row ----------------------------------------------------------------------------
def token_sites(store: ActivationStore) -> list[str]:
    """The sites with a position axis (an activation per token): what the row viewer shows."""
    return [s.hook for s in store.meta.sites if "pos" in s.dims]


@dataclass(frozen=True)
class RowView:
    """One row of a store: its tokens, their documents, and the norm of ``hook``'s activation at each token."""

    row: int
    hook: str
    tokens: np.ndarray  # int (pos,)
    str_tokens: list[str]
    doc: np.ndarray  # int (pos,): index of each token's source document
    doc_pos: np.ndarray  # int (pos,): the token's position in that document
    # bool (pos,): real tokens (padding is False where rows hold one document each)
    mask: np.ndarray
    norms: np.ndarray = field(repr=False)  # float64 (pos,): L2 norm over every feature of the site

    def table(self) -> dict[str, list[Any]]:
        """Columns, one entry per position."""
        return {
            "pos": list(range(len(self.tokens))),
            "token": self.str_tokens,
            "token_id": self.tokens.tolist(),
            "doc": self.doc.tolist(),
            "doc_pos": self.doc_pos.tolist(),
            "mask": self.mask.tolist(),
            "norm": self.norms.tolist(),
        }


def row_view(store: ActivationStore, row: int, hook: str) -> RowView:
    """Row ``row`` of ``store`` and the norm per token of ``hook``, reading only that row."""
    site = _site(store, hook)
    if "pos" not in site.dims:
        raise ConfigError(
            f"Site {hook} has no position axis (dims {', '.join(site.dims)}), so it has no activation "
            f"per token; pick one of {', '.join(token_sites(store))}."
        )
    if not isinstance(row, (int, np.integer)) or not 0 <= int(row) < store.n_rows:
        raise RowIndexError(
            f"Row {row} is out of range: store '{store.path}' has rows 0..{store.n_rows - 1}."
        )
    row = int(row)
    # (pos, ...)
    x = np.moveaxis(store.acts(hook, row), site.dims.index("pos") - 1, 0).astype(np.float64)
    tokens = store.tokens(row)
    tok = store.tokenizer
    return RowView(
        row,
        hook,
        tokens,
        [tok.decode([int(t)]) for t in tokens],
        store.doc(row),
        store.doc_pos(row),
        store.mask(row),
        np.sqrt((x.reshape(len(x), -1) ** 2).sum(-1)),
    )


def _site(store: ActivationStore, hook: str) -> Any:
    if hook not in store.sites:
        raise UnknownSiteError(
            f"Store '{store.path}' holds no site '{hook}'; it holds {', '.join(store.sites)}."
        )
    return store.meta.site(hook)


# --- results ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ResultArray:
    """One result array's description (no values read)."""

    name: str  # relative to the results group: 'patching/resid_pre/normalised'
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    dtype: str
    numeric: bool  # numbers or booleans, which a figure draws (not strings)
    attrs: Mapping[str, Any] = field(repr=False, default_factory=dict)


class ResultsSource:
    """Where results are read from: the results/ of an actstore store, or a results group
    of its own (what `actstore patch --out` and `actstore circuit --out` write)."""

    def __init__(self, path: str, group: zarr.Group | None, store: ActivationStore | None = None):
        self.path, self.group, self.store = path, group, store

    @cached_property
    def names(self) -> list[str]:
        """Every result array, sorted."""
        if self.store is not None:
            return self.store.results()
        return sorted(walk_arrays(self.group)) if self.group is not None else []

    def array(self, name: str) -> zarr.Array:
        """The zarr array ``name`` (lazily: nothing read)."""
        if self.store is not None:
            return self.store.load_result(name)
        if self.group is None or name not in self.names:
            raise StoreNotFoundError(
                f"'{self.path}' has no result '{name}'; it holds {len(self.names)} arrays."
            )
        return self.group[name]  # type: ignore[return-value]

    def describe(self, name: str) -> ResultArray:
        a = self.array(name)
        dims = dimension_names(a)
        return ResultArray(
            name,
            tuple(a.shape),
            dims,
            str(a.dtype),
            getattr(a.dtype, "kind", "") in "biuf",
            dict(a.attrs),
        )


def open_results(path: str | ActivationStore) -> ResultsSource:
    """The results at ``path``: an actstore store's results/ (an open store may be passed),
    or a plain results group; StoreNotFoundError when ``path`` is neither."""
    if isinstance(path, ActivationStore):
        return ResultsSource(path.path, None, path)
    try:
        return open_results(ActivationStore.open(path))
    except StoreNotFoundError:
        try:
            group = zarr.open_group(path, mode="r")
        except Exception:
            raise StoreNotFoundError(
                f"No store or results group at '{path}'; give the path of an actstore store or "
                "of the --out group of `actstore patch` or `actstore circuit`."
            ) from None
        return ResultsSource(path, group)


def axis_labels(src: ResultsSource, name: str, dim: str) -> list[str] | None:
    """Labels of dimension ``dim`` of result ``name``, where the result names them: an
    attribute listing them (``sites`` for the dim ``site``), a 1-D sibling array over
    that dim named after it (``edge``, ``classes``, ``sizes``), or for ``pos`` the first
    pair's tokens (a sibling ``clean_tokens``, decoded with the result's model's
    tokenizer); None otherwise."""
    info = src.describe(name)
    n = info.shape[info.dims.index(dim)]
    listed = info.attrs.get(f"{dim}s")
    if isinstance(listed, list) and len(listed) == n:
        return [str(v) for v in listed]
    parent = name.rsplit("/", 1)[0] if "/" in name else ""
    # a patching sweep's or a circuit's pairs
    if dim == "pos" and f"{parent}/clean_tokens" in src.names:
        return _pair_tokens(src, f"{parent}/clean_tokens", n)
    for sib in (dim, f"{dim}s", f"{dim}es"):
        sib_name = f"{parent}/{sib}" if parent else sib
        if sib_name == name or sib_name not in src.names:
            continue
        s = src.describe(sib_name)
        if s.dims == (dim,) and s.shape == (n,) and n <= MAX_CELLS[1]:
            return [str(v) for v in np.asarray(src.array(sib_name)[...]).tolist()]
    return None


@lru_cache(maxsize=8)
def _tokenizer(model_name: str) -> Any:
    return tokenizer_for(model_name)


def _pair_tokens(src: ResultsSource, name: str, n: int) -> list[str] | None:
    """The first pair's clean tokens, as the job's own heatmaps label positions."""
    info = src.describe(name)
    if info.dims != ("pair", "pos") or info.shape[1] != n or not info.shape[0]:
        return None
    model = info.attrs.get("model")
    tok = _tokenizer(model.get("name", "") if isinstance(model, dict) else "")
    return [tok.decode([int(t)]) for t in np.asarray(src.array(name)[0])]


def result_slice(
    arr: zarr.Array,
    axes: Sequence[str],
    at: Mapping[str, int] | None = None,
    window: Mapping[str, tuple[int, int]] | None = None,
) -> np.ndarray:
    """The values of ``arr`` over ``axes`` (1 or 2 of its dims, in that order), each of
    the other dims fixed at ``at[dim]`` (default 0), each axis over ``window[dim]`` =
    (start, stop) (default: from 0, at most MAX_CELLS values in all). Reads only the
    chunks holding them."""
    dims = dimension_names(arr)
    at, window = dict(at or {}), dict(window or {})
    if not 1 <= len(axes) <= 2 or len(set(axes)) != len(axes) or not set(axes) <= set(dims):
        raise ConfigError(f"Axes {list(axes)}: pick one or two different dims of {list(dims)}.")
    if set(at) - set(dims) or set(window) - set(axes):
        raise ConfigError(
            f"Dims {sorted(set(at) - set(dims) | set(window) - set(axes))}: fix a dim of {list(dims)} "
            f"or window one of the axes {list(axes)}."
        )
    side = int(MAX_CELLS[len(axes)] ** (1 / len(axes)))
    index: list[Any] = []
    for d, n in zip(dims, arr.shape):
        if d in axes:
            a, b = window.get(d, (0, min(n, side)))
            if not 0 <= a < b <= n or (b - a) > MAX_CELLS[len(axes)]:
                raise ConfigError(
                    f"Window {a}..{b} of '{d}': pick 0 <= start < stop <= {n}, at most "
                    f"{MAX_CELLS[len(axes)]} values."
                )
            index.append(slice(a, b))
        else:
            i = at.get(d, 0)
            if not 0 <= i < n:
                raise ConfigError(f"Index {i} of '{d}' is outside 0..{n - 1}.")
            index.append(i)
    values = np.asarray(arr[tuple(index)])
    kept = [d for d in dims if d in axes]  # the order of the array; transposed to the order asked
    values = np.transpose(values, [kept.index(d) for d in axes])
    if values.size > MAX_CELLS[len(axes)]:
        raise ConfigError(
            f"{values.size} values is more than one figure shows ({MAX_CELLS[len(axes)]}); "
            "narrow the windows."
        )
    return values
