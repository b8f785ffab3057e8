"""`actstore circuit`: flags -> :class:`~actstore.circuits.config.CircuitJobConfig` -> one call
of :func:`~actstore.circuits.job.find_circuit` (see there for what it does and writes)."""

from __future__ import annotations

import argparse

from ..circuits.config import CLEAN_SITES, CircuitJobConfig
from ..circuits.job import find_circuit
from ..parallel import is_main_process
from .flags import add_command, add_config_flags, command_line, config_from_args

__all__ = ["register"]

EXAMPLE = f"""examples:
  actstore circuit --model gpt2 --task ioi --n-pairs 64 --method exact --top 100 --out ioi.circuit.zarr
      -> ioi.circuit.zarr/circuit/exact/{{scores, edge, src, dst (edge), circuit (edge), faithfulness
         (size, pair), faithfulness_mean, sizes, n_edges (size), ...}}
      -> ioi.circuit.exact.circuit.png / .dot / .json, ioi.circuit.faithfulness.png
  actstore circuit --model gpt2 --task ioi --method exact,eap,eap-ig-inputs --steps 5
      (each attribution method's Pearson r, Spearman rank correlation and top-N overlap with exact)
  actstore circuit --model gpt2 --pairs ioi.jsonl --method eap-ig-inputs --selection greedy --top 200
  actstore circuit --model gpt2 --task ioi --store ioi_clean.zarr --clean-rows 0:16
      (clean activations read from a store cached with --sites {CLEAN_SITES}; cached first if it does
       not exist)

Pairs (--pairs FILE or --task NAME) are as for `actstore patch` (see `actstore patch --help`).
An edge's score is metric(edge patched) - metric(corrupted), the mean over pairs; faithfulness is
(m(circuit) - m(corrupted)) / (m(clean) - m(corrupted)), every edge outside the circuit corrupted.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "circuit",
        help="circuit discovery: edge scores (exact, EAP, EAP-IG), circuits, faithfulness",
        description=__doc__.split("\n\n")[0],
        epilog=EXAMPLE,
    )
    add_config_flags(p, CircuitJobConfig)
    p.set_defaults(run=_run)


def _fmt(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.3f}"


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(CircuitJobConfig, args, command_line=command_line(args))
    res = find_circuit(cfg)
    if not is_main_process():  # under torchrun: process 0 reports
        return 0
    for (
        method,
        c,
    ) in res.correlation.items():  # printed even with --quiet: the answer to several methods
        print(
            f"{method} vs exact over {c['n_edges']} edges: Pearson r = {_fmt(c['pearson'])}, Spearman = "
            f"{_fmt(c['spearman'])}, top-{c['top']} overlap = {_fmt(c['top_overlap'])}"
        )
    for method, circuit in res.circuits.items():
        curve = res.faithfulness[method]
        at = list(curve.sizes).index(cfg.top)
        print(
            f"{method}: {circuit.n_selected} edges selected, {circuit.n_edges} after pruning, faithfulness "
            f"{curve.mean[at]:.3f}; top edges: "
            + ", ".join(
                f"{circuit.graph.names[e]} ({res.scores[method][e]:+.3g})"
                for e in sorted(circuit.edges, key=lambda e: -abs(res.scores[method][e]))[:5]
            )
        )
    if cfg.progress:
        print(f"wrote {res.out} (circuit/{{{','.join(res.scores)}}}/)")
        for f in res.figures:
            print(f"figure {f}")
    return 0
