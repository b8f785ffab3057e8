"""The `actstore` command: a thin layer over the library (flags -> config -> one call).
Errors of ours print one line and exit 2; --debug shows the traceback."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import numpy as np

from ..errors import ActStoreError
from ..store import ActivationStore

# Modules that add a subcommand: each has register(sub) -> None, which adds its parser
# with set_defaults(run=handler), handler(args) -> exit code, and optionally
# on_interrupt(args) -> str, what Ctrl-C left (printed on one line; exit code 130).
_COMMAND_MODULES: tuple[str, ...] = ("actstore.cli.cache", "actstore.cli.analyze", "actstore.cli.verify",
                                     "actstore.cli.patch", "actstore.cli.probe", "actstore.cli.selftest", "actstore.demo.tour",
                                     "actstore.cli.circuit", "actstore.cli.app")


def _parser() -> argparse.ArgumentParser:
    import importlib

    p = argparse.ArgumentParser(prog="actstore", description="Cache transformer activations into Zarr stores.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    importlib.import_module(_COMMAND_MODULES[0]).register(sub)  # cache, then info, then the jobs
    _register_info(sub)
    for name in _COMMAND_MODULES[1:]:
        importlib.import_module(name).register(sub)
    return p


def _register_info(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("info", help="describe a store", epilog="example:\n  actstore info demo.zarr",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("store", help="the store to describe (a folder or URL)")
    i.add_argument("--json", action="store_true", help="print the metadata and progress as JSON")
    i.set_defaults(run=_info)


def info_text(store: ActivationStore) -> str:
    m = store.meta
    mod, corpus, lay = m.model, m.corpus, m.layout
    item = np.dtype(m.storage_dtype).itemsize
    lines = [
        f"store      {store.path}  (format {m.format_version})",
        f"model      {mod.name}  [{mod.label}]",
        f"           {mod.n_layers} layers, d_model {mod.d_model}, {mod.n_heads} heads x d_head {mod.d_head}, "
        f"n_ctx {mod.n_ctx}, dtype {mod.dtype}",
        f"           weights {mod.fingerprint}",
        f"corpus     {corpus.dataset}  (split {corpus.split}, field '{corpus.text_field}', {corpus.kind})",
        f"           seq_len {corpus.seq_len}, packing {corpus.packing}: {corpus.bos_policy}",
        f"rows       {store.rows_done} / {lay.n_rows} done"
        f"  ({lay.n_shards} shard{'s' if lay.n_shards != 1 else ''} of {lay.rows_per_shard} rows,"
        f" chunks of {lay.rows_per_chunk})",
        *([] if store.is_complete else [f"           incomplete: {m.finish_hint(store.path)}"]),
        f"storage    {m.storage_dtype}, codec {m.codec}",
        "sites",
    ]
    total = 0
    for s in m.sites:
        nbytes = int(np.prod(s.shape)) * item
        total += nbytes
        heads = f" heads {list(s.heads)}" if s.heads is not None else ""
        shape = ", ".join(f"{d}={n}" for d, n in zip(s.dims, s.shape))
        lines.append(f"  {s.hook:<34} ({shape}){heads}  {nbytes / 1e6:,.1f} MB")
    lines.append(f"  total activations {total / 1e6:,.1f} MB uncompressed")
    sw = ", ".join(f"{k} {v}" for k, v in m.software.items())
    lines += [f"created    {m.created}", f"command    {m.command_line}", f"software   {sw}"]
    return "\n".join(lines)


def _info(args: argparse.Namespace) -> int:
    store = ActivationStore.open(args.store)
    store.check_metadata()
    if args.json:
        print(json.dumps({**store.metadata, "rows_done": store.rows_done}, indent=2))
    else:
        print(info_text(store))
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
