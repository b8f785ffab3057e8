"""`actstore probe`: linear probes for every site of a store, in one pass."""

from __future__ import annotations

import argparse
import json
import os

from ..location import figure_path
from ..parallel import is_main_process
from ..probes import ProbeConfig, ProbeReport, fit_probes
from ..sites import Site
from ..store import ActivationStore
from ..store.results import check_writable
from .flags import add_command, add_config_flags, command_line, config_from_args

EXAMPLE = """examples:
  actstore probe demo.zarr --sites resid_post:all --target position
  actstore probe demo.zarr --sites resid_post:all --target next_token --max-classes 512 --class-weight balanced
  actstore probe acts.zarr --sites resid_post:3-5,blocks.6.hook_mlp_out --target sentiment.npy --kind ridge --json

targets: position (in the row), doc_pos (in the document), token, next_token, doc (document index),
or a .npy array (row, pos) aligned with the store: integers are classes (negative = no label),
floats are regression targets (NaN = no label). BOS (pos 0, unless --keep-bos) and padding are never used.
Probes are saved under STORE/results/probes/NAME/HOOK/{weight,bias,classes}, in raw activation
space; load one with actstore.probes.Probe.load(ActivationStore.open(STORE), HOOK).

many processes: torchrun --nproc-per-node 4 -m actstore probe acts.zarr --target position
  each process reads a share of the store; ridge equals one process's to float64 rounding,
  logistic solves the same problem (the sums are all-reduced); process 0 writes and prints.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "probe",
        help="fit a linear probe per site (logistic or ridge) and report train/test scores",
        epilog=EXAMPLE,
    )
    p.add_argument("store", help="the store whose activations are probed (a folder or URL)")
    add_config_flags(p, ProbeConfig)
    p.add_argument(
        "--plot", help="PNG of score by layer (default: next to the store; 'none' to skip)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object keyed by hook name")
    p.set_defaults(run=run)


def default_plot_path(store_path: str, name: str) -> str:
    return figure_path(store_path, f".probe-{name}.png")


def plot(report: ProbeReport, path: str) -> str:
    """Train and test score by layer, one pair of lines per kind of hook."""
    from ..plots import curves

    layers = sorted({r.layer if r.layer is not None else -1 for r in report.results.values()})
    kinds: dict[str, dict[int, tuple[float, float]]] = {}
    for hook, r in report.results.items():
        kind = Site.from_hook(hook).kind
        kinds.setdefault(kind, {})[r.layer if r.layer is not None else -1] = (r.train, r.test)
    ys = {}
    for kind, by_layer in kinds.items():
        label = "" if len(kinds) == 1 else f"{kind} "
        ys[f"{label}train"] = [by_layer.get(L, (float("nan"),) * 2)[0] for L in layers]
        ys[f"{label}test"] = [by_layer.get(L, (float("nan"),) * 2)[1] for L in layers]
    metric = "accuracy" if report.metric == "accuracy" else "R^2"
    return curves(
        layers,
        ys,
        path,
        title=f"{report.kind} probe of '{report.target}'",
        xlabel="layer",
        ylabel=metric,
    )


def run(args: argparse.Namespace) -> int:
    store = ActivationStore.open(args.store)
    cfg = config_from_args(ProbeConfig, args, command_line=command_line(args))
    if args.plot != "none":  # checked before the fit, as the store is (unless --no-save)
        check_writable(
            os.path.dirname(args.plot or default_plot_path(store.path, "x")) or ".",
            "the plot",
            "pass --plot PATH in a folder you can write, or --plot none",
        )
    report = fit_probes(store, cfg)
    # under torchrun every process has the same report; process 0 shows it
    if not is_main_process():
        return 0
    png = None
    if args.plot != "none":
        png = plot(report, args.plot or default_plot_path(store.path, report.name))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    print(report.table())
    notes = report.notes
    if notes.get("n_test_unseen") or notes.get("n_train_dropped"):
        print(
            f"not scored: {notes['n_test_unseen']} test positions whose class never occurs in training, "
            f"{notes['n_train_dropped']} training positions outside the {notes['n_classes']} kept classes"
        )
    if png:
        print(f"plot: {png}")
    return 0
