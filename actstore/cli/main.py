"""The `actstore` command: a thin layer over the library (flags -> config -> one call).
Errors of ours print one line and exit 2; --debug shows the traceback."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Sequence

import numpy as np

from ..capture import CacheConfig, cache
from ..errors import ActStoreError
from ..parallel import is_main_process
from ..store import ActivationStore

CACHE_EXAMPLE = """examples:
  actstore cache demo.zarr --model actstore-demo --dataset actstore-demo --sites resid_post:all --n-rows 64
  actstore cache acts.zarr --model gpt2 --dataset NeelNanda/pile-10k --sites resid_post:all,z:5-7,pattern:5.1,5.5 \\
      --n-tokens 1000000 --dtype float16
  actstore cache acts.zarr ... --resume      # continue an interrupted run exactly
"""


# Modules that add a subcommand: each has register(sub) -> None, which adds its parser
# with set_defaults(run=handler), handler(args) -> exit code.
_COMMAND_MODULES: tuple[str, ...] = ("actstore.cli.analyze", "actstore.cli.verify", "actstore.cli.patch",
                                     "actstore.cli.probe", "actstore.cli.selftest", "actstore.demo.tour")


def _parser() -> argparse.ArgumentParser:
    import importlib

    p = argparse.ArgumentParser(prog="actstore", description="Cache transformer activations into Zarr stores.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    _register_cache(sub)
    _register_info(sub)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def _register_cache(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cache", help="stream a corpus through a model and store activations",
                       epilog=CACHE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("out", help="the store to write (a folder, e.g. acts.zarr)")
    c.add_argument("--model", required=True, help="hub name (gpt2 .. gpt2-xl), local folder, or actstore-demo")
    c.add_argument("--model-revision")
    c.add_argument("--dataset", required=True, nargs="+",
                   help="hub dataset name, local .txt/.jsonl/.parquet/.csv files or globs, or actstore-demo")
    c.add_argument("--dataset-config", help="hub dataset configuration, e.g. wikitext-103-raw-v1")
    c.add_argument("--dataset-revision")
    c.add_argument("--split", default="train")
    c.add_argument("--text-field", default="text")
    c.add_argument("--seq-len", type=int, help="tokens per row (default 128; 2 x HALF_LEN + 1 for repeated-random:HALF_LEN)")
    n = c.add_mutually_exclusive_group()
    n.add_argument("--n-rows", type=int, help="rows to cache (default: the whole local corpus)")
    n.add_argument("--n-tokens", type=int, help="tokens to cache, rounded up to whole rows")
    c.add_argument("--packing", choices=("pack", "document"), default="pack",
                   help="pack: rows of concatenated documents; document: one document per row, padded, with a mask")
    c.add_argument("--sites", default="resid_post:all",
                   help="comma-separated specs: resid_post:all, z:5-7, pattern:5.1,5.5, or hook names")
    c.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                   help="compute dtype (default float32 on CPU, float16 on GPU)")
    c.add_argument("--storage-dtype", choices=("float32", "float16"))
    c.add_argument("--batch-size", type=int,
                   help="rows per forward (default: fitted to free GPU memory; 2048 tokens per forward on CPU)")
    c.add_argument("--rows-per-chunk", type=int)
    c.add_argument("--rows-per-shard", type=int)
    c.add_argument("--write-threads", type=int, help="writer threads encoding and writing arrays at once (default: cores, 2-8)")
    c.add_argument("--codec", default="none", help="none | zstd[:L] | blosc-lz4 | blosc-zstd[:L] | blosc-zstd-bitshuffle[:L] | pcodec[:L]")
    c.add_argument("--device", default="auto")
    mode = c.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an existing store of the same run")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing store")
    c.add_argument("--no-disk-check", action="store_true", help="skip the free-space check")
    c.add_argument("--no-fsync", action="store_true", help="do not fsync shards before marking them done")
    c.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    c.set_defaults(run=_cache)


def _register_info(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("info", help="describe a store", epilog="example:\n  actstore info demo.zarr",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("store")
    i.add_argument("--json", action="store_true", help="print the metadata and progress as JSON")
    i.set_defaults(run=_info)


def _cache(args: argparse.Namespace) -> int:
    dataset = args.dataset[0] if len(args.dataset) == 1 else args.dataset
    cfg = CacheConfig(
        out=args.out, model=args.model, dataset=dataset, sites=args.sites, split=args.split,
        text_field=args.text_field, dataset_config=args.dataset_config, dataset_revision=args.dataset_revision,
        model_revision=args.model_revision, seq_len=args.seq_len, n_rows=args.n_rows, n_tokens=args.n_tokens,
        packing=args.packing, dtype=args.dtype, storage_dtype=args.storage_dtype, batch_size=args.batch_size,
        write_threads=args.write_threads,
        rows_per_chunk=args.rows_per_chunk, rows_per_shard=args.rows_per_shard, codec=args.codec,
        device=args.device, resume=args.resume, overwrite=args.overwrite, check_disk=not args.no_disk_check,
        durable=not args.no_fsync, progress=not args.quiet, command_line=shlex.join(["actstore", *args.argv]),
    )
    store = cache(cfg)
    if not args.quiet and is_main_process():
        print(f"wrote {store.path}: {store.rows_done}/{store.n_rows} rows, sites: {', '.join(store.sites)}")
    return 0


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
