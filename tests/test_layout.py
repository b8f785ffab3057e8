"""The package's shape: subpackages follow the data flow (foundation -> corpus -> store ->
capture -> jobs -> cli/app/demo), lower layers never import higher ones, the top floors cli,
app and demo never import one another (but for the one entry point in SIBLING_ENTRY_POINTS),
no import cycles, every relative import resolves, and no module is over 400 lines (as
``wc -l`` counts them, formatted by ``ruff format``).

Imports are read from the source (ast), including those inside functions and those under
``if TYPE_CHECKING:`` (type hints make a dependency too: a helper types its store by the
Protocol in store/base.py, not by the reader that imports it), and a module named by a string
(``importlib.import_module("actstore.cli.cache")``, the CLI's table of commands)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "actstore"
# a module's lines as `wc -l` counts them (the code is `ruff format`ted, so the count is stable)
MAX_LINES = 400

# the lowest layer a module may import from is its own; a module imports only its layer or lower ones
LAYERS = {
    "actstore.errors": 0,
    "actstore.compat": 0,
    "actstore.sites": 0,
    "actstore.stats": 0,
    "actstore.models": 0,
    "actstore.model_info": 0,
    "actstore.collector": 0,
    "actstore.devices": 0,
    "actstore.parallel": 0,
    "actstore.location": 0,
    "actstore.plots": 0,
    "actstore.jsonl": 0,
    "actstore._faults": 0,
    "actstore.deprecation": 0,
    "actstore.resources": 0,
    "actstore.launch": 0,
    "actstore.run_options": 0,
    "actstore.model_protocol": 0,
    "actstore.families": 0,
    "actstore.random_models": 0,
    "actstore.corpus": 1,
    "actstore.store": 2,
    "actstore.capture": 3,
    "actstore.patching": 4,
    "actstore.probes": 4,
    "actstore.analysis": 4,
    "actstore.circuits": 4,
    "actstore.integrations": 4,
    "actstore.cli": 5,
    "actstore.demo": 5,
    "actstore.app": 5,
    "actstore.selftest": 5,
    "actstore.selftest_model": 5,
    "actstore.selftest_checks": 5,
    "actstore.selftest_references": 5,
    "actstore.__main__": 5,
    "actstore": 6,  # the package's own __init__: the public API over everything
}
# the top floors: each is its own room; what two of them share lives lower (store/info.py,
# corpus/demo_text.py, launch.py), and the CLI starts the app as a process, by launch.APP_MAIN
SIBLINGS = ("actstore.cli", "actstore.app", "actstore.demo")
# the only imports between them, each with its reason
SIBLING_ENTRY_POINTS = {
    (
        "actstore.cli.main",
        "actstore.demo.tour",
    ): "`actstore tour` runs the demo's steps (demo/ knows the steps, cli/ runs each as a command)",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    name = module
    while name not in LAYERS:
        if "." not in name:
            raise AssertionError(f"{module} is in no layer of tests/test_layout.py's LAYERS")
        name = name.rsplit(".", 1)[0]
    return LAYERS[name]


def _imports(module: str) -> list[tuple[int, str]]:
    """(line, imported actstore module) for every import in the module's source."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        # importlib.import_module("actstore.x.y")
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value in MODULES
            and node.value.startswith("actstore.")
        ):
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "actstore"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "actstore":
                target = node.module
            else:
                continue
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{a.name}"
                out.append((node.lineno, sub if sub in MODULES else target))
    return out


GRAPH = {m: sorted({t for _, t in _imports(m)} - {m}) for m in MODULES}


def test_every_import_resolves():
    missing = [
        f"{m}:{line} imports {t}" for m in MODULES for line, t in _imports(m) if t not in MODULES
    ]
    assert not missing, missing


def test_lower_layers_never_import_higher_ones():
    upward = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, targets in GRAPH.items()
        for t in targets
        if t in MODULES and _layer(t) > _layer(m)
    ]
    assert not upward, upward


def _room(module: str) -> str | None:
    return next((r for r in SIBLINGS if module == r or module.startswith(r + ".")), None)


def test_top_floors_never_import_one_another():
    across = [
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        for t in targets
        if t in MODULES
        and _room(m)
        and _room(t)
        and _room(m) != _room(t)
        and (m, t) not in SIBLING_ENTRY_POINTS
    ]
    assert not across, across


def test_sibling_entry_points_are_used():  # an exception that no import needs any more goes
    for m, t in SIBLING_ENTRY_POINTS:
        assert t in GRAPH[m], f"{m} no longer imports {t}: drop it from SIBLING_ENTRY_POINTS"


def test_no_import_cycles():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, []):
            if w not in MODULES:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(MODULES):
        if v not in index:
            visit(v)
    assert not cycles, cycles


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{module} has {n} lines; split it by concept ({MAX_LINES} at most)"


def test_every_module_has_a_layer():
    for m in MODULES:
        _layer(m)
