"""Bridges from a store to other libraries' trainers. Each module imports its library
only when used, and says how to install it when it is missing
(:class:`actstore.errors.MissingDependencyError`).

    from actstore.integrations import saelens   # SAELens's SAETrainer fed from a store
"""

from __future__ import annotations

from ..deprecation import moved_names

__all__: list[str] = []

# moved to actstore.errors (docs/changelog.md)
__getattr__ = moved_names(
    __name__, {"MissingDependencyError": "actstore.errors.MissingDependencyError"}
)
