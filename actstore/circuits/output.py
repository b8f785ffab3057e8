"""`actstore circuit`'s output: the results group's identity, and the figures beside it
kept consistent with everything the group holds.

A group holds the results of one *identity*: the model (its fingerprint and shape), the
pairs (their tokens; described by their file or task), the metric, the circuit settings
(selection, signed, top) and the graph. It is recorded in the attributes of the group's
``circuit`` node. A run of the same identity adds or (with --overwrite) replaces its
methods; a run of another identity is refused, or with --overwrite replaces the whole
output, group and figures, so nothing of the earlier run remains. After every run the
figures that join methods (the faithfulness curves, each method against exact) are drawn
again from the group's stored arrays, so they show every method it holds, with each
method's :func:`compare_scores` against exact.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr

from ..errors import ResultExistsError
from ..model_info import check_identity
from ..store.typed import group_at
from .config import METHODS
from .faithfulness import Faithfulness

__all__ = [
    "compare_scores",
    "identity",
    "check_output",
    "reset_output",
    "record_identity",
    "stored_methods",
    "refresh_figures",
    "figure_paths",
]

_KEY = "identity"
# what figures read
_NEEDED = (
    "scores",
    "sizes",
    "n_edges",
    "circuit_metric",
    "clean_metric",
    "corrupted_metric",
)


def compare_scores(exact: np.ndarray, approx: np.ndarray, top: int) -> dict[str, Any]:
    """How well ``approx`` edge scores track ``exact`` ones: ``pearson``, ``spearman``
    (Pearson r of the ranks, ties averaged) and ``top_overlap``, the share of exact's
    ``top`` edges by |score| that are among approx's ``top`` (None for top 0)."""
    from ..patching.attribution import compare

    e, a = np.asarray(exact, np.float64), np.asarray(approx, np.float64)
    out = {
        "pearson": compare(e, a)["pearson"],
        "spearman": compare(_ranks(e), _ranks(a))["pearson"],
        "n_edges": int(e.size),
        "top": int(top),
    }
    if top > 0:
        best = lambda s: set(np.argsort(-np.abs(s), kind="stable")[:top].tolist())  # noqa: E731
        out["top_overlap"] = len(best(e) & best(a)) / top
    else:
        out["top_overlap"] = None
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]  # ties share their mean rank


def _digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a, dtype=np.int64))
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def identity(
    model: Mapping[str, Any], pairs: Any, source: Mapping[str, Any], cfg: Any, graph: Any
) -> dict[str, Any]:
    """The identity of a run's results (JSON): what must agree for two runs' methods to share a group."""
    return {
        "model": dict(model),
        "pairs": {
            "tokens": _digest(pairs.clean, pairs.corrupted, pairs.answer, pairs.wrong),
            "n_pairs": int(pairs.clean.shape[0]),
            **dict(source),
        },
        "metric": cfg.metric,
        "selection": cfg.selection,
        "signed": bool(cfg.signed),
        "top": int(cfg.top),
        "graph": {"n_edges": int(graph.n_edges), "edges": _digest(graph.src, graph.dst)},
    }


def _pairs_name(p: Mapping[str, Any]) -> str:
    what = (
        f"pairs file {p['pairs']}"
        if p.get("pairs")
        else f"task {p.get('task')} seed {p.get('seed')}"
    )
    return f"{p.get('n_pairs')} pairs ({what})"


def _differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    out = []
    sm, cm = stored.get("model") or {}, current["model"]
    if check_identity(sm, cm):
        out.append(
            f"model: the group has {sm.get('name')!r} (fingerprint {str(sm.get('fingerprint'))[:19]}, "
            f"{sm.get('dtype')}), this run {cm.get('name')!r} (fingerprint {str(cm.get('fingerprint'))[:19]}, "
            f"{cm.get('dtype')})"
        )
    sp, cp = stored.get("pairs") or {}, current["pairs"]
    if sp.get("tokens") != cp["tokens"]:
        same = _pairs_name(sp) == _pairs_name(cp)
        out.append(
            f"pairs: the group has {_pairs_name(sp)}, this run {_pairs_name(cp)}"
            + (" tokenised otherwise" if same else "")
        )
    for key in ("metric", "selection", "signed", "top"):
        if stored.get(key) != current[key]:
            out.append(f"--{key}: the group has {stored.get(key)!r}, this run {current[key]!r}")
    sg, cg = stored.get("graph") or {}, current["graph"]
    if sg != cg and not out:
        out.append(f"graph: the group has {sg.get('n_edges')} edges, this run {cg['n_edges']}")
    return out


def _circuit_node(out: str) -> Any:
    if not os.path.isdir(out):
        return None
    try:
        root = zarr.open_group(out, mode="r")
    except Exception:  # noqa: BLE001 - not a Zarr group: ResultWriter says so
        return None
    node = root.get("circuit")
    return node if isinstance(node, zarr.Group) else None


def stored_methods(out: str) -> list[str]:
    """The methods whose results the group at ``out`` holds (in METHODS order, then others)."""
    node = _circuit_node(out)
    if node is None:
        return []
    # complete: a crashed write is not
    have = [k for k in node.group_keys() if all(a in node[k] for a in _NEEDED)]
    return sorted(have, key=lambda m: (METHODS.index(m) if m in METHODS else len(METHODS), m))


def check_output(out: str, current: Mapping[str, Any], overwrite: bool) -> bool:
    """Before any work: whether this run replaces the whole output (True: none there yet, or
    another identity with ``overwrite``), or adds to the group (False: the same identity).
    Another identity without ``overwrite`` is a ResultExistsError naming both."""
    node = _circuit_node(out)
    if node is None or not list(node.group_keys()):
        return True
    stored = node.attrs.get(_KEY)
    if stored is None:
        if overwrite:
            return True
        raise ResultExistsError(
            f"'{out}' holds circuit results ({', '.join(node.group_keys())}) that record no "
            "identity (model, pairs, metric), so this run cannot be added to them; pass "
            "--overwrite to replace the whole group and its figures, or --out another path."
        )
    diffs = _differences(stored, current)
    if not diffs:
        return False
    if overwrite:
        return True
    raise ResultExistsError(
        f"'{out}' holds circuit results ({', '.join(stored_methods(out))}) of another run: "
        f"{'; '.join(diffs)}. One group holds one model, pair set, metric and circuit setting; "
        "pass --overwrite to replace the whole group and its figures, or --out another path."
    )


def figure_paths(out: str, methods: Any = METHODS) -> list[str]:
    """Every figure file a circuit run writes next to ``out`` for ``methods``."""
    from .figures import out_stem

    base = out_stem(out)
    paths = [f"{base}.{m}.circuit.{ext}" for m in methods for ext in ("png", "dot", "json")]
    paths += [f"{base}.{m}-vs-exact.png" for m in methods if m != "exact"]
    return paths + [f"{base}.faithfulness.png"]


def reset_output(out: str) -> None:
    """Remove the group's circuit results and every figure of a circuit run beside it."""
    node = _circuit_node(out)
    if node is not None:
        del zarr.open_group(out, mode="r+")["circuit"]
    for path in figure_paths(out):
        if os.path.isfile(path):
            os.remove(path)


def record_identity(out: str, current: Mapping[str, Any]) -> None:
    """Record the run's identity on the group's ``circuit`` node (made if need be)."""
    zarr.open_group(out, mode="a").require_group("circuit").attrs[_KEY] = dict(current)


def _curve(grp: Any) -> Faithfulness:
    return Faithfulness(
        grp["sizes"][:],
        grp["n_edges"][:],
        grp["circuit_metric"][:].astype(np.float64),
        grp["clean_metric"][:].astype(np.float64),
        grp["corrupted_metric"][:].astype(np.float64),
    )


def refresh_figures(
    out: str, model_name: str, n_pairs: int, selection: str, top: int
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Draw the figures that join methods from every method the group holds: the
    faithfulness curves, and each method against exact (its correlation stored in its
    arrays' attributes); remove those of methods it does not hold. Returns the
    correlations with exact and the figures drawn."""
    from .figures import draw_comparison, draw_curves

    methods = stored_methods(out)
    node = _circuit_node(out)
    figures = [
        draw_curves(out, {m: _curve(node[m]) for m in methods}, model_name, n_pairs, selection)
    ]
    correlation: dict[str, dict[str, Any]] = {}
    if "exact" in methods:
        exact = node["exact/scores"][:].astype(np.float64)
        for m in methods:
            if m == "exact":
                continue
            scores = node[f"{m}/scores"][:].astype(np.float64)
            correlation[m] = compare_scores(exact, scores, top)
            _set_attr(out, m, "correlation_with_exact", correlation[m])
            figures.append(draw_comparison(out, m, exact, scores, correlation[m], model_name))
    # each method's own, drawn by its run
    circuits = [p for p in figure_paths(out, methods) if ".circuit." in p]
    keep = set(figures) | set(circuits)
    for path in figure_paths(out):
        if path not in keep and os.path.isfile(path):
            os.remove(path)
    return correlation, figures


def _set_attr(out: str, method: str, key: str, value: Any) -> None:
    grp = group_at(zarr.open_group(out, mode="r+"), f"circuit/{method}")
    for _, arr in grp.arrays():
        if "method" in arr.attrs:
            arr.attrs[key] = value
