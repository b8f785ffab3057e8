"""`actstore selftest [--device DEV] [--json]`: check that actstore gives the reference's
numbers on this machine with the installed versions (see actstore.selftest)."""

from __future__ import annotations

import argparse
import json

from .flags import add_command

EXAMPLES = """examples:
  actstore selftest                  # CPU, under a minute; exit 1 if any check fails
  actstore selftest --device cuda    # on a GPU: float32 and float16
  actstore selftest --json           # the versions and every check's error and tolerance
  actstore selftest --model ./my-llama   # your own model (any family with an adapter): caching,
                                         # the logit lens, --engine hf, and what is refused for it
run it after installing or upgrading anything, on each new machine, and before a long sweep
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "selftest",
        help="check caching, patching, attribution and direct path against their references",
        epilog=EXAMPLES,
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default), cuda, cuda:1, ..., mps, or auto (a GPU if there is one); on a GPU float16 is "
        "checked too. A device this machine lacks is refused before any check",
    )
    p.add_argument(
        "--model",
        default=None,
        help="check a model of your own (hub name or folder) instead of the demo "
        "model: caching every site kind, the logit lens, --engine hf where the family has it",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=_selftest)


def _selftest(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from ..selftest import check_selftest_device, run_selftest

    # before anything is loaded: an unknown or absent device is no failed check
    check_selftest_device(args.device)
    hf_logging.disable_progress_bar()  # the report is the output: no weight-loading bars between its lines
    if args.model is None:
        report = run_selftest(args.device, progress=not args.json)
    else:
        from ..selftest_model import run_model_selftest

        report = run_model_selftest(args.model, args.device, progress=not args.json)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.text())
    return 0 if report.passed else 1
