"""The `actstore` command: a thin layer over the library (flags -> config -> one call).
Errors of ours print one line and exit 2; --debug shows the traceback. Here too: `info`, and
`actstore tour`, which runs the demo's steps (actstore/demo/tour.py) through this dispatch."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from ..demo import tour
from ..errors import ActStoreError
from ..store import ActivationStore
from ..store.info import info_text
from .flags import add_command

# Modules that add a subcommand: each has register(sub) -> None, which adds its parser
# with set_defaults(run=handler), handler(args) -> exit code, and optionally
# on_interrupt(args) -> str, what Ctrl-C left (printed on one line; exit code 130).
_COMMAND_MODULES: tuple[str, ...] = (
    "actstore.cli.cache",
    "actstore.cli.analyze",
    "actstore.cli.verify",
    "actstore.cli.patch",
    "actstore.cli.probe",
    "actstore.cli.selftest",
    "actstore.cli.circuit",
    "actstore.cli.app",
)


def _parser() -> argparse.ArgumentParser:
    import importlib

    p = argparse.ArgumentParser(
        prog="actstore", description="Cache transformer activations into Zarr stores."
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    importlib.import_module(_COMMAND_MODULES[0]).register(sub)  # cache, then info, then the jobs
    _register_info(sub)
    for name in _COMMAND_MODULES[1:]:
        importlib.import_module(name).register(sub)
        if name.endswith(".selftest"):
            _register_tour(sub)  # the commands' order in --help, as before
    return p


def _register_info(sub: argparse._SubParsersAction) -> None:
    i = add_command(
        sub,
        "info",
        help="describe a store",
        epilog="example:\n  actstore info demo.zarr",
    )
    i.add_argument("store", help="the store to describe (a folder or URL)")
    i.add_argument("--json", action="store_true", help="print the metadata and progress as JSON")
    i.set_defaults(run=_info)


def _info(args: argparse.Namespace) -> int:
    store = ActivationStore.open(args.store)
    store.check_metadata()
    if args.json:
        print(json.dumps({**store.metadata, "rows_done": store.rows_done}, indent=2))
    else:
        print(info_text(store))
    return 0


def _run(argv: Sequence[str], say: bool) -> None:
    """Print the command and run it (its output hidden unless ``say``)."""
    if say:
        print(f"\n$ actstore {shlex.join(argv)}", flush=True)
    with contextlib.nullcontext() if say else contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(argv))
    if rc != 0:
        raise ActStoreError(
            f"tour step `actstore {shlex.join(argv)}` failed (exit {rc}); see the message above."
        )


def run_tour(
    out: str = "demo_out",
    n_rows: int = 200,
    n_rep_rows: int = 64,
    n_pairs: int = 32,
    quiet: bool = False,
    overwrite: bool = False,
) -> tour.TourResult:
    """`actstore tour` from Python: the tour's steps into ``out``, see :func:`actstore.demo.tour.run_tour`."""
    return tour.run_tour(
        lambda argv, say: _run(argv, say),
        out,
        n_rows=n_rows,
        n_rep_rows=n_rep_rows,
        n_pairs=n_pairs,
        quiet=quiet,
        overwrite=overwrite,
    )


def _register_tour(sub: argparse._SubParsersAction) -> None:
    doc = tour.__doc__ or ""
    p = add_command(
        sub,
        "tour",
        help="a short tour on the offline demo model: cache, probe, induction heads, patching, the IOI circuit",
        description=doc.split("\n\n")[0],
        epilog="example:\n  actstore tour demo_out",
    )
    p.add_argument(
        "out",
        nargs="?",
        default="demo_out",
        help="folder for the stores and figures (default demo_out)",
    )
    p.add_argument(
        "--n-rows", type=int, default=200, help="rows of 128 tokens of the demo corpus to cache"
    )
    p.add_argument("--n-pairs", type=int, default=32, help="held-out IOI pairs to patch")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files and stores of the tour's names in OUT that no earlier tour made "
        "(an earlier tour's are always replaced)",
    )
    p.set_defaults(run=_cli)


def _cli(args: Any) -> int:
    res = run_tour(
        args.out,
        n_rows=args.n_rows,
        n_pairs=args.n_pairs,
        quiet=args.quiet,
        overwrite=args.overwrite,
    )
    if args.quiet:
        print(tour.summary(res))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv  # provenance for jobs that record their command line
    try:
        return int(args.run(args))
    except ActStoreError as e:
        if args.debug:
            raise
        print(f"actstore: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        where = getattr(args, "on_interrupt", None)  # a command's own account of where it stopped
        print(f"actstore: interrupted{'; ' + where(args) if where else ''}", file=sys.stderr)
        return 130
