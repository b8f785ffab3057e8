"""What the store's helpers (view.py, loader.py, results.py, site_stats.py) read of an
open store: the interface :class:`actstore.store.reader.ActivationStore` provides, as a
Protocol, so that they type their store without importing the reader, which imports them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import zarr

from .meta import Layout, StoreMeta

__all__ = ["StoreLike"]


class StoreLike(Protocol):
    """An open actstore store (an :class:`~actstore.store.reader.ActivationStore`)."""

    path: str
    group: zarr.Group
    meta: StoreMeta
    layout: Layout

    @property
    def expected(self) -> dict[str, bytes]: ...

    @property
    def sites(self) -> list[str]: ...

    @property
    def n_rows(self) -> int: ...

    @property
    def done(self) -> np.ndarray: ...

    def array(self, name: str) -> zarr.Array: ...

    def site(self, hook: str) -> zarr.Array: ...

    def check_done(self, rows: slice) -> None: ...

    def check_shards(self, shards: np.ndarray, what: str) -> None: ...

    def acts(
        self, hook: str, rows: slice | int = ..., as_: str = ..., check_done: bool = ...
    ) -> Any: ...

    def mask(self, rows: slice | int = ..., check_done: bool = ...) -> np.ndarray: ...

    def loader(
        self,
        sites: str | Sequence[str],
        batch_size: int,
        shuffle: bool = ...,
        seed: int = ...,
        **kw: Any,
    ) -> Any: ...

    def dataloader(
        self,
        sites: str | Sequence[str],
        batch_size: int,
        shuffle: bool = ...,
        seed: int = ...,
        **kw: Any,
    ) -> Any: ...

    def stats(self, hook: str) -> Any: ...
