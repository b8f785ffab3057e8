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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import zarr

from .. import _faults, location
from ..compat import versions
from ..corpus import (
    PLAN_FIELDS,
    CorpusScan,
    CorpusSpec,
    is_synthetic,
    iter_rows,
    parse_synthetic,
    scan,
)
from ..errors import ConfigError, CorpusExhaustedError, EmptyCorpusError, WriterError
from ..families.hf import ENGINES, HFCapture
from ..models import LoadedModel, ModelLike, as_loaded, check_device, check_processes
from ..parallel import Group, group_for
from ..run_options import ModelRunOptions, init_fields
from ..sites import Site, SiteShape, parse_sites, probe_shapes
from ..store import ActivationStore, CorpusMeta, SiteMeta, StoreMeta
from ..store.codecs import codec_usage
from ..store.format import (
    FORMAT_VERSION,
    Layout,
    create_store,
    estimate_bytes,
    finalize_stats,
    parse_codec,
    plan_layout,
    remove_partial_files,
    row_bytes,
)
from ..store.typed import array_at
from .batching import auto_batch_size, chunk_dividing, default_chunk_rows
from .checks import Log, check_disk, check_output, check_same_run, existing_store, fmt_bytes
from .lock import store_lock
from .progress import Progress
from .reads import make_plan, read_shards
from .shard_write import Shard
from .shard_write import ShardWrite as _ShardWrite
from .staging import BufferPool, ShardBuffers
from .writer import BackgroundWriter

__all__ = ["CacheConfig", "cache"]

STORAGE_DTYPES = ("float16", "float32")
# LoadedModel.capture's contract: (tokens, sites, keep, sink)
Capture = Callable[..., dict[str, torch.Tensor]]
DEFAULT_SEQ_LEN = 128


@dataclass
class CacheConfig(ModelRunOptions):
    """Options of one caching run; ``actstore cache``'s flags are generated from these
    fields and their metadata (see actstore.cli.flags), and from the run options
    (device, dtype, model_revision, progress: actstore.run_options)."""

    out: str = field(
        metadata={"help": "the store to write (a folder, e.g. acts.zarr)", "positional": True}
    )
    model: ModelLike = field(
        metadata={  # or, in Python, a TransformerBridge in memory
            "help": "hub name (gpt2 .. gpt2-xl), local folder, or actstore-demo"
        }
    )
    dataset: str | Sequence[str] = field(
        metadata={  # or, in Python, a list of strings
            "help": "hub dataset name, local .txt/.jsonl/.parquet/.csv files or globs, or actstore-demo",
            "nargs": "+",
            "from_cli": lambda paths: paths[0] if len(paths) == 1 else paths,
        }
    )
    sites: str | Sequence[str | Site] = field(
        default="resid_post:all",
        metadata={
            "help": "comma-separated specs: resid_post:all, z:5-7, pattern:5.1,5.5, or hook names"
        },
    )
    split: str = field(default="train", metadata={"help": "hub dataset split (default train)"})
    text_field: str = field(
        default="text", metadata={"help": "the column or JSON key holding the text (default text)"}
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "hub dataset configuration, e.g. wikitext-103-raw-v1"}
    )
    dataset_revision: str | None = field(
        default=None, metadata={"help": "hub dataset revision (branch, tag, commit)"}
    )
    seq_len: int | None = field(
        default=None,
        metadata={
            "help": "tokens per row (default 128; 2 x HALF_LEN + 1 for repeated-random:HALF_LEN)"
        },
    )
    n_rows: int | None = field(
        default=None,
        metadata={"help": "rows to cache (default: the whole local corpus)", "group": "amount"},
    )
    n_tokens: int | None = field(
        default=None,
        metadata={
            "help": "tokens to cache, rounded up to whole rows (ceil(n_tokens / seq_len) rows)",
            "group": "amount",
        },
    )
    packing: str = field(
        default="pack",
        metadata={
            "help": "pack: rows of concatenated documents; document: one document per row, padded, with a mask",
            "choices": ("pack", "document"),
        },
    )
    storage_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype of the stored activations (default float32 for float32 compute, else float16)",
            "choices": STORAGE_DTYPES,
        },
    )
    batch_size: int | None = field(
        default=None,
        metadata={  # see batching.py
            "help": "rows per forward (default: fitted to free GPU memory; 2048 tokens per forward on CPU)"
        },
    )
    rows_per_chunk: int | None = field(
        default=None,
        metadata={
            "help": "rows per inner chunk (default: the batch size if given, else ~8 MB of the largest site)"
        },
    )
    rows_per_shard: int | None = field(
        default=None,
        metadata={
            "help": "rows per shard, the unit of writing (default ~256 MB of all sites; on resume: the store's)"
        },
    )
    codec: str = field(
        default="none",
        metadata={  # see README for the measurements
            "help": codec_usage()
        },
    )
    resume: bool = field(
        default=False,
        metadata={"help": "continue an existing store of the same run", "group": "mode"},
    )
    overwrite: bool = field(
        default=False, metadata={"help": "replace an existing store", "group": "mode"}
    )
    check_disk: bool = field(
        default=True, metadata={"help": "skip the free-space check", "flag": "--no-disk-check"}
    )
    durable: bool = field(
        default=True,
        metadata={"help": "do not fsync shards before marking them done", "flag": "--no-fsync"},
    )
    engine: str = field(
        default="bridge",
        metadata={
            "help": "bridge: TransformerBridge's hooks, bit-exact to run_with_cache (default); hf: forward hooks on the "
            "plain transformers model's modules, its forward's speed, values within float rounding "
            "(docs/caching.md)",
            "choices": ENGINES,
        },
    )
    write_threads: int | None = field(
        default=None,
        metadata={
            "help": "writer threads encoding and writing arrays at once (default: cores, 2-8)"
        },
    )

    def validate(self) -> None:
        def positive(name: str) -> None:
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"{name} must be a positive integer; got {v!r}.")

        for name in (
            "seq_len",
            "n_rows",
            "n_tokens",
            "batch_size",
            "rows_per_chunk",
            "rows_per_shard",
            "write_threads",
        ):
            positive(name)
        if self.seq_len is not None and self.seq_len < 2:
            raise ConfigError(
                f"seq_len must be at least 2 (BOS plus one token); got {self.seq_len}."
            )
        if self.n_rows is not None and self.n_tokens is not None:
            raise ConfigError("Pass n_rows or n_tokens, not both.")
        if self.resume and self.overwrite:
            raise ConfigError("Pass --resume or --overwrite, not both.")
        if self.packing not in ("pack", "document"):
            raise ConfigError(f"Unknown packing '{self.packing}'; expected 'pack' or 'document'.")
        if (
            self.packing == "document"
            and isinstance(self.dataset, str)
            and is_synthetic(self.dataset)
        ):
            raise ConfigError(
                f"Synthetic rows ('{self.dataset}') are whole rows already, so --packing document does "
                "not apply to them; leave --packing out."
            )
        if self.engine not in ENGINES:
            raise ConfigError(f"Unknown engine '{self.engine}'; pass one of {', '.join(ENGINES)}.")
        if self.storage_dtype is not None and self.storage_dtype not in STORAGE_DTYPES:
            raise ConfigError(
                f"storage_dtype must be one of {', '.join(STORAGE_DTYPES)}; got '{self.storage_dtype}'."
            )
        parse_codec(self.codec)
        # a model object: as_loaded says where it is and how to move it
        if isinstance(self.model, str):
            check_device(self.device)


def cache(config: CacheConfig | None = None, /, **options: Any) -> ActivationStore:
    """Cache activations into a Zarr store and return it opened for reading.
    Takes a CacheConfig, or its fields as keyword arguments. ``model`` is a name or a
    TransformerBridge already in memory (fine-tuned, hooked), used as it is: see
    :func:`actstore.models.as_loaded`."""
    cfg = config if config is not None else CacheConfig(**options)
    cfg.validate()
    cfg = dataclasses.replace(cfg, out=location.normalize(cfg.out), seq_len=_seq_len(cfg))
    check_output(cfg.out)
    check_processes(cfg.model)
    # one process, or this one's place in a torchrun / accelerate launch
    procs = group_for(cfg.device)
    lock = nullcontext if location.is_url(cfg.out) else (lambda: store_lock(cfg.out))
    with procs.main_context(lock, "taking the store lock"):
        return _cache(cfg, procs)


def _seq_len(cfg: CacheConfig) -> int:
    """The row length asked for, or the dataset's own (a repeated-random row: 2 x HALF_LEN + 1), or 128."""
    if cfg.seq_len is not None:
        return cfg.seq_len
    if isinstance(cfg.dataset, str) and is_synthetic(cfg.dataset):
        return parse_synthetic(cfg.dataset, None).seq_len
    return DEFAULT_SEQ_LEN


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

    spec = CorpusSpec.from_dataset(
        cfg.dataset,
        split=cfg.split,
        text_field=cfg.text_field,
        config_name=cfg.dataset_config,
        revision=cfg.dataset_revision,
        seq_len=cfg.seq_len,
        packing=cfg.packing,
    )
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
    meta = _metadata(cfg, model, spec, layout, sites, shapes, storage_dtype)
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


def _metadata(
    cfg: CacheConfig,
    model: LoadedModel,
    spec: CorpusSpec,
    layout: Layout,
    sites: Sequence[Site],
    shapes: Mapping[str, SiteShape],
    storage_dtype: str,
) -> StoreMeta:
    """The store's metadata; its layout (``attrs["actstore"]``) is :meth:`StoreMeta.to_dict`'s."""
    tok = model.tokenizer
    corpus = spec.describe()
    corpus["bos_policy"] = (
        "every row starts with BOS; documents separated by end-of-text"
        if spec.packing == "pack"
        else "BOS + document, truncated, padded; see mask"
    )
    corpus["bos_token_id"] = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    corpus["eos_token_id"] = tok.eos_token_id
    corpus["vocab_size"] = len(tok)
    return StoreMeta(
        format_version=FORMAT_VERSION,
        model=model.info,
        corpus=CorpusMeta.from_dict(corpus, "corpus"),
        layout=layout,
        sites=tuple(
            SiteMeta(
                s.hook,
                s.layer,
                None if s.heads is None else tuple(s.heads),
                ("row", *shapes[s.hook].dims),
                (layout.n_rows, *shapes[s.hook].shape),
            )
            for s in sites
        ),
        storage_dtype=storage_dtype,
        codec=cfg.codec,
        engine=cfg.engine,
        software=versions(),
        command_line=cfg.command_line
        or f"actstore.cache({_config_repr(cfg, model.info.as_argument())})",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _config_repr(cfg: CacheConfig, model: str) -> str:
    # a model object is shown by name, not copied
    values = dataclasses.asdict(dataclasses.replace(cfg, model=model))
    # as a call: the run options last
    fields = {f.name: values[f.name] for f in init_fields(CacheConfig)}
    if not isinstance(cfg.dataset, str):
        fields["dataset"] = f"<{len(cfg.dataset)} items>"
    return ", ".join(
        f"{k}={v!r}" for k, v in fields.items() if v != CacheConfig.__dataclass_fields__[k].default
    )


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
