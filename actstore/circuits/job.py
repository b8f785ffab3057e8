"""`actstore circuit`'s job: edge scores over prompt pairs, the circuit they pick, and its
faithfulness curve.

Pairs come as for `actstore patch` (``--pairs FILE`` or ``--task NAME``, see
:mod:`actstore.patching.job`). Each ``--method`` scores every edge of the graph
(:mod:`actstore.circuits.graph`): ``exact`` patches each edge (:func:`exact_edge_scores`),
``eap``, ``eap-ig-inputs`` and ``eap-ig-activations`` estimate it from gradients
(:func:`edge_attribution`). A score is ``metric(edge patched) - metric(corrupted)``,
the mean over pairs, the edge patched meaning that its downstream input reads the
upstream node's clean output in the corrupted run.

For each method the job writes, under ``circuit/<method>/`` of ``--out``:

    scores (edge)  edge (edge: names)  src, dst (edge: indices of upstream and downstream)
    circuit (edge: bool, the --top circuit after pruning)
    faithfulness (size, pair)  faithfulness_mean (size)  sizes (size: edges selected)
    n_edges (size: edges after pruning)  circuit_metric (size, pair)
    clean_metric, corrupted_metric (pair)  clean_tokens, corrupted_tokens (pair, pos)

with the run's attributes (model, task or pairs, metric, steps, n_pairs, command line,
software versions) and, beside exact, each method's correlation with it. Figures go
next to ``--out``: the circuit as PNG, DOT and JSON, the faithfulness curves, and each
method's scores against exact. The group holds one identity (model, pairs, metric,
circuit settings, graph; :mod:`actstore.circuits.output`): a run of the same one adds its
methods, and the figures joining methods are drawn from all of them; another is refused,
or with --overwrite replaces the whole output.

Under torchrun / accelerate (several processes), the pairs are split into the same batches
of ``--batch-pairs`` whatever the number of processes, dealt round-robin; each process
scores its batches (every method, and the faithfulness curves), the per-pair results are
gathered in batch order, and process 0 writes. So the results are the same, byte for byte,
for any number of processes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, StoreMismatchError
from ..patching.clean import store_rows
from ..patching.pair_job import PairJob, check_separated, default_out, pair_source
from ..patching.pairs import Pairs, check_source
from ..store import ActivationStore, ResultWriter
from .batches import Batches
from .circuit import SELECTIONS, Circuit, select_circuit
from .clean import store_hooks
from .config import CLEAN_SITES, METHODS, CircuitJobConfig
from .faithfulness import Faithfulness
from .graph import Graph
from .metrics import check_kind, circuit_metric
from .output import compare_scores

__all__ = ["CircuitJobConfig", "CircuitJobResult", "find_circuit", "compare_scores"]


@dataclass
class CircuitJobResult:
    out: str  # the results group
    scores: dict[str, np.ndarray]  # method -> (edge,)
    circuits: dict[str, Circuit]  # method -> the --top circuit (pruned)
    faithfulness: dict[str, Faithfulness]  # method -> its curve
    # method -> compare_scores with exact
    correlation: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)


def _check(cfg: CircuitJobConfig) -> None:
    """Everything that can be checked before the model loads."""
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods:
        raise ConfigError(
            f"Unknown method {unknown[0] if unknown else cfg.method!r}; --method takes one or a comma "
            f"list of {', '.join(METHODS)}."
        )
    check_kind(cfg.metric, functions=False)
    if cfg.selection not in SELECTIONS:
        raise ConfigError(
            f"Unknown selection {cfg.selection!r}; expected one of {', '.join(SELECTIONS)}."
        )
    for name, value in (("--steps", cfg.steps), ("--batch-pairs", cfg.batch_pairs)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}.")
    if cfg.top < 0:
        raise ConfigError(f"--top must be at least 0, got {cfg.top}.")
    if cfg.store is not None and os.path.abspath(cfg.store) == os.path.abspath(
        cfg.out or _default_out(cfg)
    ):
        raise ConfigError(
            f"--out {cfg.out} is the clean store; write the circuit results to a group of their own "
            "(another --out path)."
        )
    if cfg.clean_rows is not None and cfg.store is None:
        raise ConfigError("--clean-rows names rows of a store; pass --store too, or drop it.")
    if cfg.clean_rows is not None and not re.fullmatch(r"\d+:\d+", cfg.clean_rows):
        raise ConfigError(
            f"--clean-rows {cfg.clean_rows!r}: expected A:B, the store rows A to B-1 (e.g. 0:64)."
        )
    if cfg.store is not None and not os.path.exists(cfg.store) and cfg.clean_rows is not None:
        raise ConfigError(
            f"Store '{cfg.store}' does not exist, so --clean-rows cannot name its rows; drop "
            "--clean-rows (the store is then cached from the clean prompts)."
        )
    check_source(cfg)  # the pair-source fields are PatchJobConfig's


def _default_out(cfg: CircuitJobConfig) -> str:
    return default_out(cfg, "circuit")


def _clean_rows(
    cfg: CircuitJobConfig, job: PairJob
) -> tuple[ActivationStore | None, list[int] | None]:
    """The store of the clean activations (cached from the clean prompts if it does not
    exist), checked, and the rows that hold the clean prompts: --clean-rows, checked, or
    found by their tokens."""
    if cfg.store is None:
        return None, None
    pairs, n_pairs = job.pairs, int(job.pairs.clean.shape[0])
    store, fix = job.clean_store(
        cfg, CLEAN_SITES, store_hooks(job.model.info.n_layers), "edge scores read"
    )
    if cfg.clean_rows is None:
        return store, store_rows(store, pairs.clean, fix)
    a, b = (int(x) for x in cfg.clean_rows.split(":"))
    if b - a != n_pairs or b > store.layout.n_rows:
        raise ConfigError(
            f"--clean-rows {cfg.clean_rows} names {b - a} rows of a {store.layout.n_rows}-row store; "
            f"there are {n_pairs} pairs: pass A:A+{n_pairs} within the store."
        )
    tokens = torch.as_tensor(
        np.asarray(store.tokens()[a:b, : pairs.clean.shape[1]]), dtype=torch.long
    )
    if not torch.equal(tokens, pairs.clean):
        bad = int(torch.nonzero((tokens != pairs.clean).any(1))[0, 0])
        raise StoreMismatchError(
            f"Row {a + bad} of store '{store.path}' does not hold the clean prompt of pair "
            f"{bad + 1}; pass the rows that do (--clean-rows), or drop --clean-rows to find them."
        )
    return store, list(range(a, b))


_NOT_SEPARATED = (
    "The metric's mean on the clean runs ({clean:.6g}) and on the corrupted runs ({corrupted:.6g}) are "
    "the same, so faithfulness would be 0 / 0; nothing was done. Use pairs whose clean prompts the "
    "model separates from the corrupted ones."
)


def find_circuit(cfg: CircuitJobConfig) -> CircuitJobResult:
    """Score every edge by each method, pick and prune the --top circuit, measure the
    faithfulness curve; write the results and figures (see the module docstring)."""
    from . import output

    _check(cfg)
    job = PairJob.start(cfg)  # the pair-source fields are PatchJobConfig's
    procs, model, pairs = job.procs, job.model, job.pairs
    bridge, info, n_pairs = model.bridge, model.info, int(pairs.clean.shape[0])
    graph = Graph.from_model(bridge)
    if cfg.top > graph.n_edges:
        raise ConfigError(
            f"--top {cfg.top} is more than the graph's {graph.n_edges} edges; pass at most "
            f"{graph.n_edges}."
        )
    out = cfg.out or _default_out(cfg)
    source = pair_source(cfg)
    ident = output.identity(info.to_dict(), pairs, source, cfg, graph)
    writers: dict[str, ResultWriter] = {}

    # another run's group: refused, or replaced whole (process 0 writes)
    def check_output() -> bool:
        replace = output.check_output(out, ident, cfg.overwrite)
        writers.update(
            {
                m: ResultWriter(
                    out,
                    f"circuit/{m}",
                    cfg.overwrite,
                    what=f"{m} circuit results",
                    fix="pass --overwrite to replace them, or --out another path",
                    unwritable_fix="pass --out a path you can write",
                )
                for m in cfg.methods
            }
        )
        return replace

    replace_all = procs.on_main(check_output, "checking the output")
    store, rows = _clean_rows(cfg, job)  # may cache the clean prompts: after every refusal above
    job.write_pairs(cfg)  # every check passed: the pairs are what this run scores

    clean, corrupted = pairs.clean.to(model.device), pairs.corrupted.to(model.device)
    with torch.no_grad():
        clean_logits, corrupted_logits = bridge(clean), bridge(corrupted)

    metric = circuit_metric(
        cfg.metric,
        answer=pairs.answer.to(model.device),
        wrong=pairs.wrong.to(model.device),
        clean_logits=clean_logits,
        corrupted_logits=corrupted_logits,
    )
    clean_values, corrupted_values = (
        metric(x).double().cpu().numpy() for x in (clean_logits, corrupted_logits)
    )
    check_separated(clean_values, corrupted_values, _NOT_SEPARATED)
    run = Batches(cfg, procs, bridge, metric, clean, corrupted, store, rows)
    scores = {m: run.scores(m, graph) for m in cfg.methods}
    # --signed ranks the edges that move the metric towards the clean run first (for kl: the negative scores)
    sign = 1.0 if metric.higher_is_better else -1.0
    pick = dict(how=cfg.selection, absolute=not cfg.signed)
    circuits = {
        m: select_circuit(graph, sign * s, cfg.top, **pick)  # type: ignore[arg-type]
        for m, s in scores.items()
    }
    curves = {m: run.faithfulness(graph, sign * s, pick) for m, s in scores.items()}
    result = CircuitJobResult(out, scores, circuits, curves)
    attrs = _attrs(cfg, info, source, n_pairs, store)
    result.correlation, result.figures = procs.on_main(
        lambda: _write_all(
            cfg, result, writers, graph, pairs, attrs, replace_all, ident, info.name
        ),
        "writing the results",
    )
    return result


def _attrs(
    cfg: CircuitJobConfig,
    info: Any,
    source: dict[str, Any],
    n_pairs: int,
    store: ActivationStore | None,
) -> dict[str, Any]:
    from ..compat import versions

    return {
        "model": info.to_dict(),
        **source,
        "metric": cfg.metric,
        "steps": cfg.steps,
        "n_pairs": int(n_pairs),
        "selection": cfg.selection,
        "signed": cfg.signed,
        "top": cfg.top,
        "clean_source": f"store {store.path}" if store is not None else "clean forward",
        "command_line": cfg.command_line,
        "software": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _write_all(
    cfg: CircuitJobConfig,
    result: CircuitJobResult,
    writers: dict[str, ResultWriter],
    graph: Graph,
    pairs: Pairs,
    attrs: dict[str, Any],
    replace_all: bool,
    ident: dict[str, Any],
    name: str,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Process 0's part: every method's arrays, the identity and the figures; (the
    correlations with exact, the figures written)."""
    from . import output
    from .figures import draw_circuit

    out, n_pairs = result.out, int(pairs.clean.shape[0])
    if replace_all:  # another run's results (or none): nothing of them, arrays or figures, remains
        output.reset_output(out)
    output.record_identity(out, ident)
    for method, w in writers.items():
        _write(
            w,
            graph,
            result.scores[method],
            result.circuits[method],
            result.faithfulness[method],
            pairs,
            {**attrs, "method": method},
        )
    figures = [
        p
        for m in result.scores
        for p in draw_circuit(out, m, result.circuits[m], result.scores[m], name, n_pairs)
    ]
    # the figures that join methods show every method in the group, this run's and those it already held
    correlation, joint = output.refresh_figures(out, name, n_pairs, cfg.selection, cfg.top)
    return correlation, figures + joint


def _write(
    w: ResultWriter,
    graph: Graph,
    scores: np.ndarray,
    circuit: Circuit,
    curve: Faithfulness,
    pairs: Pairs,
    attrs: dict[str, Any],
) -> None:
    doc = {
        **attrs,
        "faithfulness": "(m(circuit) - m(corrupted)) / (m(clean) - m(corrupted)); faithfulness_mean: "
        "the same of the means over pairs",
    }
    w.write("scores", scores.astype(np.float32), ("edge",), attrs)
    w.write("edge", np.array(graph.names, dtype=np.dtypes.StringDType()), ("edge",), attrs)
    w.write("src", graph.src, ("edge",), {"upstream": [u.name for u in graph.upstream]})
    w.write("dst", graph.dst, ("edge",), {"downstream": [d.name for d in graph.downstream]})
    w.write(
        "circuit",
        circuit.mask,
        ("edge",),
        {
            **attrs,
            "n_selected": circuit.n_selected,
            "n_edges": circuit.n_edges,
            "nodes": list(circuit.nodes),
        },
    )
    w.write("faithfulness", curve.per_pair.astype(np.float32), ("size", "pair"), doc)
    w.write("faithfulness_mean", curve.mean.astype(np.float32), ("size",), doc)
    w.write("circuit_metric", curve.metric.astype(np.float32), ("size", "pair"), attrs)
    w.write(
        "sizes",
        np.asarray(curve.sizes, np.int64),
        ("size",),
        {"what": "edges selected, before pruning"},
    )
    w.write(
        "n_edges", np.asarray(curve.n_edges, np.int64), ("size",), {"what": "edges after pruning"}
    )
    w.write("clean_metric", curve.clean.astype(np.float32), ("pair",), attrs)
    w.write("corrupted_metric", curve.corrupted.astype(np.float32), ("pair",), attrs)
    w.write("clean_tokens", pairs.clean.numpy().astype(np.int32), ("pair", "pos"), attrs)
    w.write("corrupted_tokens", pairs.corrupted.numpy().astype(np.int32), ("pair", "pos"), attrs)
    w.finish()
