"""The page registry: every module in this folder is a page. A page module defines
``TITLE: str``, ``SECTION: str`` ("Prompt" or "Store") and ``render() -> None``; the
navigation lists the sections in SECTIONS order and the pages in ORDER (a page not in
ORDER comes after those of its section, by module name)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ORDER", "SECTIONS", "PageSpec", "discover"]

ORDER = (
    "tokens",
    "logit_lens",
    "attention",
    "dla",
    "induction",
    "patching",
    "store_info",
    "store_stats",
    "store_rows",
    "store_results",
)
SECTIONS = ("Prompt", "Store")


@dataclass(frozen=True)
class PageSpec:
    name: str  # the module's name, also the page's URL path
    title: str
    section: str
    render: Callable[[], None]


def discover() -> list[PageSpec]:
    """The page modules present, imported and checked, in navigation order."""
    specs = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        missing = [a for a in ("TITLE", "SECTION", "render") if not hasattr(mod, a)]
        if missing:
            raise TypeError(
                f"page module {mod.__name__} lacks {', '.join(missing)} "
                "(see actstore/app/views/__init__.py)"
            )
        if mod.SECTION not in SECTIONS:
            raise ValueError(
                f"page module {mod.__name__} has SECTION {mod.SECTION!r}; expected one of {SECTIONS}"
            )
        specs.append(PageSpec(info.name, mod.TITLE, mod.SECTION, mod.render))

    def rank(p: PageSpec) -> tuple[int, int, str]:
        return (
            SECTIONS.index(p.section),
            ORDER.index(p.name) if p.name in ORDER else len(ORDER),
            p.name,
        )

    return sorted(specs, key=rank)
