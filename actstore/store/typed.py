"""Typed access to zarr nodes. zarr types a group's member as ``Array | Group`` and every
attribute as JSON (``str | int | ... | None``); a store's layout fixes which is which, so
these helpers say it once, and a node that is not what the layout says raises
StoreDamagedError naming it, instead of an AttributeError somewhere later."""

from __future__ import annotations

from typing import Any

import zarr

from ..errors import StoreDamagedError

__all__ = ["array_at", "group_at", "attrs_of", "dimension_names", "write_unit_shape"]


def _node(group: zarr.Group, name: str, kind: type[Any]) -> Any:
    node = group[name]  # KeyError, as zarr, when there is none
    if not isinstance(node, kind):
        where = getattr(group.store, "root", group.store)
        raise StoreDamagedError(
            f"'{name}' of the store at '{where}' is not the {kind.__name__.lower()} its layout "
            "says it is; `actstore verify STORE` names what is wrong."
        )
    return node


def array_at(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group`` (KeyError, as zarr, when there is none)."""
    return _node(group, name, zarr.Array)


def group_at(group: zarr.Group, name: str) -> zarr.Group:
    """The group ``name`` of ``group`` (KeyError, as zarr, when there is none)."""
    return _node(group, name, zarr.Group)


def attrs_of(node: zarr.Array | zarr.Group) -> dict[str, Any]:
    """The node's attributes as a plain dict, their values as the JSON the writer stored."""
    return dict(node.attrs)


def write_unit_shape(arr: zarr.Array) -> tuple[int, ...]:
    """The shape of ``arr``'s unit of writing: the shard's when sharded, else the chunk's."""
    return tuple(arr.shards if arr.shards is not None else arr.chunks)


def dimension_names(arr: zarr.Array) -> tuple[str, ...]:
    """The names of ``arr``'s dimensions, ``dim_0``, ``dim_1``, ... where it has none."""
    names = getattr(arr.metadata, "dimension_names", None) or ()  # zarr v2 metadata has none
    return tuple(n if n is not None else f"dim_{i}" for i, n in enumerate(names)) or tuple(
        f"dim_{i}" for i in range(arr.ndim)
    )
