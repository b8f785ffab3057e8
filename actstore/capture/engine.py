"""The caching engine: check everything, plan the store, then stream rows through
the model and hand whole shards to the writer; resume from the `done` manifest.

    import actstore
    store = actstore.cache(out="acts.zarr", model="gpt2", dataset="NeelNanda/pile-10k",
                           sites="resid_post:all", n_rows=4096)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import zarr

from .. import _faults, location
from ..corpus import PLAN_FIELDS, CorpusScan, CorpusSpec, iter_rows, scan
from ..errors import ConfigError, CorpusExhaustedError, EmptyCorpusError, WriterError
from ..families.hf import HFCapture
from ..models import LoadedModel, as_loaded, check_processes
from ..parallel import Group, group_for
from ..sites import Site, SiteShape, parse_sites, probe_shapes
from ..store import ActivationStore
from ..store.format import (
    Layout,
    create_store,
    estimate_bytes,
    finalize_stats,
    plan_layout,
    remove_partial_files,
    row_bytes,
)
from ..store.typed import array_at
from .batching import auto_batch_size, chunk_dividing, default_chunk_rows
from .checks import Log, check_disk, check_output, check_same_run, existing_store, fmt_bytes
from .config import CacheConfig
from .lock import store_lock
from .metadata import store_metadata
from .progress import Progress
from .reads import make_plan, read_shards
from .shard_write import Shard
from .shard_write import ShardWrite as _ShardWrite
from .staging import BufferPool, ShardBuffers
from .writer import BackgroundWriter

__all__ = ["CacheConfig", "cache"]

# LoadedModel.capture's contract: (tokens, sites, keep, sink)
Capture = Callable[..., dict[str, torch.Tensor]]


def cache(config: CacheConfig | None = None, /, **options: Any) -> ActivationStore:
    """Cache activations into a Zarr store and return it opened for reading.
    Takes a CacheConfig, or its fields as keyword arguments. ``model`` is a name or a
    TransformerBridge already in memory (fine-tuned, hooked), used as it is: see
    :func:`actstore.models.as_loaded`."""
    cfg = config if config is not None else CacheConfig(**options)
    cfg.validate()
    cfg = dataclasses.replace(cfg, out=location.normalize(cfg.out), seq_len=cfg.resolved_seq_len())
    check_output(cfg.out)
    check_processes(cfg.model)
    # one process, or this one's place in a torchrun / accelerate launch
    procs = group_for(cfg.device)
    lock = nullcontext if location.is_url(cfg.out) else (lambda: store_lock(cfg.out))
    with procs.main_context(lock, "taking the store lock"):
        return _cache(cfg, procs)


def _cache(cfg: CacheConfig, procs: Group) -> ActivationStore:
    assert cfg.seq_len is not None  # validate() has set it
    existing = existing_store(cfg.out, cfg.resume, cfg.overwrite)
    log = Log(cfg.progress and procs.main)

    model = as_loaded(cfg.model, cfg.dtype, procs.device or cfg.device, cfg.model_revision)
    info = model.info
    if cfg.seq_len > info.n_ctx:
        raise ConfigError(
            f"seq_len {cfg.seq_len} is beyond the model's context of {info.n_ctx} tokens; pass --seq-len {info.n_ctx} or less."
        )
    sites = parse_sites(
        cfg.sites, model.bridge.hook_dict.keys(), info.n_layers, info.n_heads, info.n_kv_heads
    )
    forward = model.capture if cfg.engine == "bridge" else HFCapture(model, sites).capture
    shapes = probe_shapes(forward, sites, cfg.seq_len, info.dim_sizes)
    storage_dtype = cfg.storage_dtype or ("float32" if info.dtype == "float32" else "float16")

    spec = cfg.corpus_spec(cfg.seq_len)
    scanned: list[CorpusScan] = []  # the plan's pass over the corpus, made once, by process 0
    n_rows = procs.on_main(
        lambda: _n_rows(cfg, spec, model.tokenizer, scanned), "counting the corpus"
    )
    bytes_per_row = row_bytes(shapes, storage_dtype)
    batch = cfg.batch_size or auto_batch_size(
        lambda t: forward(t, sites, keep=False), model.device, cfg.seq_len, n_rows, bytes_per_row
    )
    layout = _layout(
        cfg,
        existing,
        n_rows,
        bytes_per_row,
        batch,
        default_chunk_rows(shapes, storage_dtype, n_rows),
    )
    meta = store_metadata(cfg, model, spec, layout, sites, shapes, storage_dtype)
    if existing is not None and cfg.resume:
        check_same_run(existing, meta, log)

    done_before = existing.rows_done if existing is not None and cfg.resume else 0
    need = estimate_bytes(
        n_rows - done_before, cfg.seq_len, shapes, storage_dtype, spec.packing == "document"
    )
    log(
        f"{info.name} ({info.label}), {len(sites)} sites, {n_rows} rows x {cfg.seq_len} tokens; "
        f"store estimate {fmt_bytes(estimate_bytes(n_rows, cfg.seq_len, shapes, storage_dtype, spec.packing == 'document'))}"
        f" uncompressed, {fmt_bytes(need)} still to write; batch {batch} rows"
        f"{'' if cfg.batch_size else ' (auto)'}"
    )
    if cfg.check_disk and not location.is_url(cfg.out):
        check_disk(cfg.out, need)
    if procs.distributed:
        log(f"{procs.world} processes; each writes its own shards")
    # every process has checked everything before the store changes
    procs.barrier("the store was created")

    def create() -> np.ndarray:
        if existing is not None and cfg.overwrite:
            location.remove(cfg.out)
        if existing is None or cfg.overwrite:
            if not location.is_url(cfg.out) and os.path.isdir(cfg.out):
                os.rmdir(cfg.out)  # an empty folder (anything else was refused above)
            create_store(
                cfg.out,
                meta,
                layout,
                shapes,
                storage_dtype,
                cfg.codec,
                spec.packing == "document",
                make_plan(spec, scanned[0] if scanned else None, layout),
                PLAN_FIELDS,
            )
        if not location.is_url(cfg.out):
            n_stale = remove_partial_files(cfg.out)
            if n_stale:
                log(f"removed {n_stale} temporary files left by an interrupted write")
        # the manifest as it stands before any process writes: every rank deals the shards
        # still to do from this one copy (a rank reading it later could see shards another
        # rank has just finished, deal them differently, and write a shard twice)
        return np.asarray(array_at(zarr.open_group(cfg.out, mode="r"), "done")[:])

    done = procs.on_main(create, "creating the store")
    group = zarr.open_group(cfg.out, mode="r+")
    resumed = existing is not None and not cfg.overwrite
    _run(
        cfg,
        group,
        model,
        forward,
        spec,
        layout,
        sites,
        shapes,
        storage_dtype,
        batch,
        log,
        resumed,
        procs,
        done,
    )
    procs.barrier("every process finished its shards")
    procs.on_main(
        lambda: _finish(group, cfg.out, [s.hook for s in sites]), "merging the statistics"
    )
    return ActivationStore.open(cfg.out)


# --- checks before any work -------------------------------------------------------


def _n_rows(cfg: CacheConfig, spec: CorpusSpec, tokenizer: Any, scanned: list[CorpusScan]) -> int:
    """The rows to cache. A finite local corpus is read once, up to them: the pass
    that counts them also makes the corpus plan (appended to ``scanned``)."""
    assert cfg.seq_len is not None  # validate() has set it
    want = cfg.n_rows if cfg.n_tokens is None else -(-cfg.n_tokens // cfg.seq_len)
    # finite and local: count now, so a short corpus fails up front
    if spec.kind not in (
        "hub",
        "synthetic",
    ):
        scanned.append(scan(spec, tokenizer, limit=want))
        available = scanned[0].n_rows
        if want is not None and available < want:
            raise CorpusExhaustedError(
                f"The corpus yields only {available} rows of {cfg.seq_len} tokens, fewer than the {want} asked for; "
                f"pass --n-rows {available} (or fewer), a smaller --seq-len, or a larger corpus."
            )
        return want or available
    if want is None:
        what = (
            "is streamed, so its length is unknown up front" if spec.kind == "hub" else "never ends"
        )
        raise ConfigError(f"Dataset '{spec.source}' {what}; pass --n-rows or --n-tokens.")
    if next(iter_rows(spec, tokenizer), None) is None:
        raise EmptyCorpusError(
            f"The dataset '{spec.source}' yields no rows of {cfg.seq_len} tokens; check --split and --text-field."
        )
    return want


def _layout(
    cfg: CacheConfig,
    existing: ActivationStore | None,
    n_rows: int,
    bytes_per_row: int,
    batch: int,
    auto_chunk: int,
) -> Layout:
    assert cfg.seq_len is not None  # validate() has set it
    rpc, rps = cfg.rows_per_chunk, cfg.rows_per_shard
    if existing is not None and cfg.resume:  # keep the store's layout whatever the batch size now
        rpc = rpc or existing.layout.rows_per_chunk
        rps = rps or existing.layout.rows_per_shard
    if rpc is None:  # the layout must not depend on the machine's memory
        rpc = chunk_dividing(rps, min(cfg.batch_size or auto_chunk, n_rows))
    return plan_layout(n_rows, cfg.seq_len, batch, bytes_per_row, rpc, rps)


def _finish(group: zarr.Group, out: str, hooks: Sequence[str]) -> None:
    """Every shard is done once every process has finished (else the run is wrong, never
    silently incomplete); then the statistics are merged."""
    missing = np.flatnonzero(~np.asarray(array_at(group, "done")[:]))
    if len(missing):
        raise WriterError(
            f"Every process finished, but shards {missing[:8].tolist()} of '{out}' are not done: a bug "
            "in how the shards were dealt. Run the same command with --resume to write them."
        )
    finalize_stats(group, hooks)


# --- the run ------------------------------------------------------------------------

_PENDING = 2  # shards filled and waiting for the writer; one more is being filled


def _write_threads(cfg: CacheConfig) -> int:
    return cfg.write_threads or min(8, max(2, os.cpu_count() or 2))


def _run(
    cfg: CacheConfig,
    group: zarr.Group,
    model: LoadedModel,
    forward: Capture,
    spec: CorpusSpec,
    layout: Layout,
    sites: Sequence[Site],
    shapes: Mapping[str, SiteShape],
    storage_dtype: str,
    batch: int,
    log: Log,
    resumed: bool,
    procs: Group,
    done: np.ndarray,
) -> None:
    """The pipeline: the forward stages each shard's activations into a host buffer set
    (device copies overlap compute on CUDA), the writer thread takes whole shards and
    writes their arrays in parallel; buffer sets are recycled (bounded memory). With
    several processes, each does its own share of the shards still to do (``done``: the
    manifest read once, before any process wrote)."""
    assert cfg.seq_len is not None  # validate() has set it
    _faults.pause("deal")
    todo = [int(k) for k in np.flatnonzero(~done)]
    if len(todo) == 0:
        log("every row is already done")
        return
    mine = set(procs.owned(todo))
    if not mine:
        return
    row_mb = row_bytes(shapes, storage_dtype) / 1e6
    rows_before = sum(b - a for a, b in (layout.shard_rows(int(k)) for k in np.flatnonzero(done)))
    pool = BufferPool(
        lambda: ShardBuffers(shapes, storage_dtype, layout.rows_per_shard, model.device),
        _PENDING + 1,
    )
    write = _ShardWrite(
        group,
        cfg.out,
        layout,
        shapes,
        cfg.durable,
        clear_first=bool(done.any()) or resumed,
        threads=_write_threads(cfg),
        release=pool.release,
        background=model.device == "cpu",
    )
    writer: BackgroundWriter[Shard] = BackgroundWriter(write, write.describe, max_pending=_PENDING)
    bar = Progress(
        layout,
        rows_before,
        row_mb,
        cfg.seq_len,
        array_at(group, "done") if procs.distributed else None,
        on=cfg.progress and procs.main,
    )
    try:
        for k, rows in read_shards(group, spec, model.tokenizer, layout, todo, mine):
            a, b = layout.shard_rows(k)
            bufs = pool.acquire(writer.check)
            for i in range(0, b - a, batch):
                j = min(i + batch, b - a)
                forward(
                    torch.from_numpy(rows.tokens[i:j]).long(),
                    sites,
                    sink=lambda hook, t, i=i: bufs.put(hook, i, t),
                )
                writer.check()
                bar.update(j - i)
            bufs.seal()
            writer.submit(Shard(k, rows, bufs, b - a))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
        write.close()
