"""`actstore cache`: flags (generated from :class:`~actstore.capture.CacheConfig`) -> config
-> one call of :func:`~actstore.capture.cache`."""

from __future__ import annotations

import argparse

from ..capture import CacheConfig, cache
from ..errors import ActStoreError
from ..parallel import is_main_process
from ..store import ActivationStore
from .flags import add_command, add_config_flags, command_line, config_from_args

__all__ = ["register"]

EXAMPLE = """examples:
  actstore cache demo.zarr --model actstore-demo --dataset actstore-demo --sites resid_post:all --n-rows 64
  actstore cache acts.zarr --model gpt2 --dataset NeelNanda/pile-10k --sites resid_post:all,z:5-7,pattern:5.1,5.5 \\
      --n-tokens 1000000 --dtype float16
  actstore cache acts.zarr ... --resume      # continue an interrupted run exactly
"""


def register(sub: argparse._SubParsersAction) -> None:
    c = add_command(
        sub,
        "cache",
        help="stream a corpus through a model and store activations",
        epilog=EXAMPLE,
    )
    add_config_flags(c, CacheConfig)
    c.set_defaults(run=_run, on_interrupt=_stopped)


def _run(args: argparse.Namespace) -> int:
    cfg = config_from_args(CacheConfig, args, command_line=command_line(args))
    store = cache(cfg)
    if cfg.progress and is_main_process():
        print(
            f"wrote {store.path}: {store.rows_done}/{store.n_rows} rows, sites: {', '.join(store.sites)}"
        )
    return 0


def _stopped(args: argparse.Namespace) -> str:
    """Where an interrupted run stopped: the rows done, which --resume keeps."""
    try:
        store = ActivationStore.open(args.out)
    except ActStoreError:
        return f"nothing was written to '{args.out}'"
    return (
        f"'{args.out}' holds {store.rows_done} of {store.n_rows} rows, safely; rerun the same command with "
        "--resume to continue"
    )
