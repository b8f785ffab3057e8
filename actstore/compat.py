"""The versions of the libraries actstore runs on, for provenance and for errors.

actstore relies on internals of some of them (how TransformerLens's bridge runs a
block and hands a key/value cache to its attention, how zarr lays out a shard): those
are bounded in ``pyproject.toml`` to the releases tested, pinned exactly in
``constraints.txt``, and guarded at run time (the patching engine's self-check,
``actstore selftest``). Errors of those guards name the installed versions.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

__all__ = ["RELIED_ON", "versions", "describe"]

# packages whose internals actstore relies on (bounded in pyproject.toml)
RELIED_ON = ("transformers", "transformer-lens", "torch", "zarr", "numcodecs")
_RECORDED = (
    "actstore",
    "torch",
    "transformer-lens",
    "transformers",
    "zarr",
    "numcodecs",
    "datasets",
    "numpy",
)


def versions() -> dict[str, str]:
    """Python's and each recorded package's installed version ('not installed' if absent)."""
    out = {"python": sys.version.split()[0]}
    for pkg in _RECORDED:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def describe(packages: tuple[str, ...] = RELIED_ON) -> str:
    """'transformers 5.24.0, transformer-lens 4.3.0, ...' for error messages."""
    v = versions()
    return ", ".join(f"{p} {v.get(p) or version(p)}" for p in packages)
