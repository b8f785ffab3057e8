"""The patching page's numbers, as plain functions over actstore's own library (no
streamlit here): prompt pairs (typed, or a built-in task), activation patching of
resid_pre (layer x position) and of every head (layer x head), attribution patching of
the same sweeps, exact edge patching and EAP over the edge graph, and the tables the
page draws from them.

Every value is one library call's result, untouched: :mod:`actstore.patching`'s sweeps
and :mod:`actstore.patching.attribution`'s with the normalised :class:`~actstore.patching.LogitDiff`
(0 = the corrupted run, 1 = the clean run, means over pairs), and
:func:`~actstore.circuits.exact_edge_scores` / :func:`~actstore.circuits.edge_attribution`
with the ``norm-logit-diff`` circuit metric (the same normalisation). Pairs are checked by
:mod:`actstore.patching.pairs` (equal token lengths, one-token answers that differ,
prompts that differ), so bad input raises its :class:`~actstore.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..circuits import circuit_metric, edge_attribution, exact_edge_scores
from ..circuits.graph import Graph
from ..errors import ConfigError
from ..model_protocol import HookedModel
from ..patching import LogitDiff, attribution, sweeps, tasks
from ..patching.pairs import Pairs, tokenize_pairs

__all__ = [
    "DEMO_IOI",
    "TASK_CHOICES",
    "SWEEP_KINDS",
    "default_task",
    "task_records",
    "typed_record",
    "tokenize",
    "position_labels",
    "SweepResults",
    "run_sweeps",
    "edge_chunks",
    "EdgeResults",
    "edge_metric",
    "exact_edges",
    "eap_edges",
    "run_edges",
    "edge_results",
    "edge_matrix",
    "head_summary",
    "top_edges",
    "AUTO_EDGE_LIMIT",
]

DEMO_IOI = "demo-ioi"
#: the page's built-in tasks: the demo model's held-out IOI pairs, then actstore.patching.tasks' (factual needs a file)
TASK_CHOICES: dict[str, str] = {
    DEMO_IOI: "the demo model's held-out IOI pairs (actstore.corpus.demo_text.ioi_pairs, template 0): the corrupted "
    "prompt names the indirect object where the clean one repeats the subject",
    **{k: v for k, v in tasks.TASKS.items() if k != "factual"},
}
#: the two activation-patching sweeps the page draws (rows of actstore.patching.table.SWEEPS)
SWEEP_KINDS = ("resid_pre", "attn_head_out_all_pos")
#: graphs of at most this many edges are edge-patched without asking (the demo model has 479)
AUTO_EDGE_LIMIT = 2000


def default_task(model_name: str) -> str:
    """The demo model's IOI pairs for the demo model; Wang et al.'s IOI for any other."""
    from ..resources import DEMO_MODEL

    return DEMO_IOI if model_name == DEMO_MODEL else "ioi"


def task_records(task: str, n_pairs: int, seed: int, tokenizer: Any) -> list[dict[str, Any]]:
    """``n_pairs`` pairs of a built-in task as `actstore patch --pairs` records."""
    if task == DEMO_IOI:
        from ..corpus import demo_text as data

        if n_pairs < 1:
            raise ConfigError(f"the number of pairs must be at least 1, got {n_pairs}.")
        return data.ioi_pairs(n_pairs, seed=seed + data.HELDOUT_SEED, template=0)
    if task not in TASK_CHOICES:
        tasks.make_pairs(task)  # raises: unknown task, with the list and a close match
    return [p.to_json() for p in tasks.make_pairs(task, n_pairs, seed, tokenizer)]


def typed_record(clean: str, corrupted: str, answer: str, wrong: str) -> dict[str, Any]:
    """One pair as typed on the page, in the pairs-file format."""
    return {"clean": clean, "corrupted": corrupted, "answer": answer, "wrong": wrong}


def tokenize(
    records: Sequence[dict[str, Any]], tokenizer: Any, source: str = "typed pair"
) -> Pairs:
    """Tokenise and check pairs as `actstore patch` does (BOS + text; ConfigError on
    unequal token lengths, multi-token or equal answers, identical prompts)."""
    if not records:
        raise ConfigError("no prompt pairs to patch; type a pair or choose a task.")
    items = [
        (source if len(records) == 1 else f"{source}, pair {i + 1}", dict(r))
        for i, r in enumerate(records)
    ]
    return tokenize_pairs(items, tokenizer, source, "Patch pairs of one token length together.")


def position_labels(pairs: Pairs, tokenizer: Any) -> list[str]:
    """One label per position from the first pair: 'i token', or 'i clean→corrupted' where they differ."""
    out = []
    for i, (c, d) in enumerate(zip(pairs.clean[0].tolist(), pairs.corrupted[0].tolist())):
        a, b = tokenizer.decode([c]), tokenizer.decode([d])
        out.append(f"{i} {a!r}" if c == d else f"{i} {a!r}→{b!r}")
    return out


def _device(model: HookedModel) -> torch.device:
    return torch.device(model.cfg.device)


@dataclass
class SweepResults:
    """Normalised logit differences (0 corrupted, 1 clean; means over pairs)."""

    clean_logit_diff: np.ndarray  # (pair,) raw logit difference answer - wrong of each clean prompt
    corrupted_logit_diff: np.ndarray  # (pair,)
    exact: dict[str, np.ndarray]  # sweep name -> (layer, pos) or (layer, head)
    attribution: dict[str, np.ndarray]  # the same cells, estimated by attribution patching
    correlation: dict[str, dict[str, Any]]  # sweep name -> attribution.compare(exact, attribution)


def _metric(model: HookedModel, pairs: Pairs) -> tuple[LogitDiff, np.ndarray, np.ndarray, Any]:
    """The normalised logit difference of these pairs, their raw clean and corrupted
    logit differences, and the clean run's cache."""
    dev = _device(model)
    n_pos, n_ctx = int(pairs.clean.shape[1]), int(model.cfg.n_ctx)
    if n_pos > n_ctx:
        raise ConfigError(
            f"the prompts are {n_pos} tokens (with BOS), beyond the model's context of {n_ctx}; "
            "shorten them."
        )
    raw = LogitDiff(pairs.answer, pairs.wrong, per_example=True)
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(pairs.clean.to(dev))
        corrupted_logits = model(pairs.corrupted.to(dev))
    clean, corr = (raw(x).double().cpu().numpy() for x in (clean_logits, corrupted_logits))
    if not (np.isfinite(clean).all() and np.isfinite(corr).all()):
        raise ConfigError(
            "the model gave logit differences that are not finite (a float16 overflow?); load it in "
            "float32."
        )
    if abs(clean.mean() - corr.mean()) <= 1e-4 * max(np.abs(clean).max(), np.abs(corr).max()):
        raise ConfigError(
            f"the clean and corrupted prompts give the same mean logit difference ({clean.mean():.4g} "
            f"and {corr.mean():.4g}), so the normalised effect is 0 / 0; use prompts the model tells "
            "apart (change the corrupted prompt where it matters for the answer)."
        )
    return (
        LogitDiff(pairs.answer, pairs.wrong).normalised(clean_logits, corrupted_logits),
        clean,
        corr,
        cache,
    )


def run_sweeps(
    model: HookedModel, pairs: Pairs, names: Sequence[str] = SWEEP_KINDS
) -> SweepResults:
    """Exact and attribution patching of ``names`` (rows of the sweep table) on ``pairs``
    with the normalised logit difference: ``actstore.patching.get_act_patch_<name>`` and
    ``actstore.patching.attribution.attribution_patch`` (one forward and backward for all)."""
    metric, clean, corr, cache = _metric(model, pairs)
    corrupted = pairs.corrupted.to(_device(model))
    with torch.no_grad():
        exact = {
            n: getattr(sweeps, f"get_act_patch_{n}")(
                model, corrupted, cache, metric, progress=False
            )
            for n in names
        }
    approx = attribution.attribution_patch(model, corrupted, cache, metric, sweeps=tuple(names))
    as_np = lambda t: t.detach().float().cpu().numpy()  # noqa: E731
    exact_np = {n: as_np(v) for n, v in exact.items()}
    approx_np = {n: as_np(v) for n, v in approx.items()}
    return SweepResults(
        clean,
        corr,
        exact_np,
        approx_np,
        {n: attribution.compare(exact_np[n], approx_np[n]) for n in names},
    )


def edge_chunks(graph: Graph, size: int = 256) -> list[np.ndarray]:
    """Every edge number, in chunks of about ``size`` along the graph's order (the unit
    of the page's progress bar)."""
    ids = np.arange(graph.n_edges, dtype=np.int64)
    return [ids[i : i + size] for i in range(0, graph.n_edges, size)]


@dataclass
class EdgeResults:
    """One score per edge of ``graph`` (graph order), normalised logit difference, mean over pairs."""

    graph: Graph
    exact: np.ndarray  # (edge,) metric(edge patched) - metric(corrupted)
    eap: np.ndarray  # (edge,) EAP's estimate of the same
    correlation: dict[str, Any]  # attribution.compare(exact, eap)


def edge_metric(model: HookedModel, pairs: Pairs) -> Any:
    """The ``norm-logit-diff`` circuit metric of these pairs (refused, like the sweeps,
    for pairs the model does not tell apart)."""
    dev = _device(model)
    _metric(model, pairs)
    with torch.no_grad():
        clean_logits, corrupted_logits = model(pairs.clean.to(dev)), model(pairs.corrupted.to(dev))
    return circuit_metric(
        "norm-logit-diff",
        answer=pairs.answer,
        wrong=pairs.wrong,
        clean_logits=clean_logits,
        corrupted_logits=corrupted_logits,
    )


def exact_edges(
    model: HookedModel, pairs: Pairs, edges: np.ndarray, metric: Any = None
) -> np.ndarray:
    """(len(edges),) :func:`exact_edge_scores` of these edges of ``Graph.from_model(model)``."""
    dev = _device(model)
    metric = edge_metric(model, pairs) if metric is None else metric
    scores = exact_edge_scores(
        model, pairs.clean.to(dev), pairs.corrupted.to(dev), metric, edges=edges, progress=False
    )
    return scores.float().cpu().numpy()


def eap_edges(model: HookedModel, pairs: Pairs, metric: Any = None) -> np.ndarray:
    """(edge,) :func:`edge_attribution` (EAP) of every edge of ``Graph.from_model(model)``."""
    dev = _device(model)
    metric = edge_metric(model, pairs) if metric is None else metric
    scores = edge_attribution(
        model, pairs.clean.to(dev), pairs.corrupted.to(dev), metric, method="eap", progress=False
    )
    return scores.detach().float().cpu().numpy()


def run_edges(
    model: HookedModel,
    pairs: Pairs,
    chunk: int = 256,
    on_progress: Callable[[int, int], None] | None = None,
) -> EdgeResults:
    """Exact edge patching of every edge (:func:`exact_edges`, ``chunk`` edges a call,
    ``on_progress(done, total)`` after each) and EAP (:func:`eap_edges`)."""
    metric = edge_metric(model, pairs)
    graph = Graph.from_model(model)
    parts, done = [], 0
    for ids in edge_chunks(graph, chunk):
        parts.append(exact_edges(model, pairs, ids, metric))
        done += len(ids)
        if on_progress is not None:
            on_progress(done, graph.n_edges)
    return edge_results(graph, np.concatenate(parts), eap_edges(model, pairs, metric))


def edge_results(graph: Graph, exact: np.ndarray, eap: np.ndarray) -> EdgeResults:
    """The scores with their correlation (:func:`actstore.patching.attribution.compare`)."""
    return EdgeResults(graph, exact, eap, attribution.compare(exact, eap))


def edge_matrix(graph: Graph, scores: np.ndarray) -> tuple[list[str], list[str], np.ndarray]:
    """(upstream names, downstream input names, (upstream, downstream) scores, NaN where
    no edge): the edge heatmap's rows, columns and cells."""
    grid = np.full((len(graph.upstream), len(graph.downstream)), np.nan)
    grid[graph.src, graph.dst] = scores
    return [u.name for u in graph.upstream], [d.name for d in graph.downstream], grid


def head_summary(graph: Graph, scores: np.ndarray) -> np.ndarray:
    """(layer, head): the sum of the scores of the edges leaving each head (its total
    effect as a sender, edge by edge) — the big-model view of the edge scores."""
    out = np.zeros((graph.n_layers, graph.n_heads))
    for u, node in enumerate(graph.upstream):
        if node.kind == "head":
            out[node.layer, node.head] = scores[graph.src == u].sum()
    return out


def top_edges(
    graph: Graph, scores: np.ndarray, k: int = 20, other: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """The ``k`` edges of largest |score|: name, score (and ``other``'s value, e.g. EAP's)."""
    order = np.argsort(-np.abs(scores), kind="stable")[:k]
    return [
        {
            "edge": graph.names[e],
            "exact": float(scores[e]),
            **({"eap": float(other[e])} if other is not None else {}),
        }
        for e in order
    ]
