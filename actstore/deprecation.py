"""Names that moved: a package keeps each old name for one release as a deprecated alias.

    __getattr__ = moved_names(__name__, {"attribution": "actstore.patching.attribution",
                                         "Moments": "actstore.stats.Moments"})

Reading an alias emits a DeprecationWarning naming the new place and returns the very
object found there (a module-level ``__getattr__``, PEP 562, so nothing is imported
until an old name is used). The names that moved are listed in docs/changelog.md.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["moved_names", "resolve"]


def resolve(target: str) -> Any:
    """The object a dotted path names: a module (``actstore.patching.attribution``) or
    a name in one (``actstore.stats.Moments``)."""
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        if e.name != target:  # the module is there but something it imports is not
            raise
        module, _, name = target.rpartition(".")
        return getattr(importlib.import_module(module), name)


def moved_names(package: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that resolves each old name in ``moved``
    (old name -> dotted path of its new place) with a DeprecationWarning."""

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        # ``from package import name`` asks twice: importlib's hasattr check, then the import itself,
        # which warns, at the user's line
        if not sys._getframe(1).f_code.co_filename.startswith("<frozen importlib"):
            warnings.warn(
                f"{package}.{name} is deprecated and will be removed in the next release; use "
                f"{moved[name]} instead.",
                DeprecationWarning,
                stacklevel=2,
            )
        return resolve(moved[name])

    return __getattr__
