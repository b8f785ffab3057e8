"""Bridges from a store to other libraries' trainers. Each module imports its library
only when used, and says how to install it when it is missing.

    from actstore.integrations import saelens   # SAELens's SAETrainer fed from a store
"""

from __future__ import annotations

from ..errors import ActStoreError

__all__ = ["MissingDependencyError"]


class MissingDependencyError(ActStoreError, ImportError):
    """An optional library an integration needs is not installed."""
