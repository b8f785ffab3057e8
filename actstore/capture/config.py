"""The options of one caching run (:class:`CacheConfig`), checked before any work
(:meth:`CacheConfig.validate`), with what they default to and the corpus they name.
``actstore cache``'s flags are generated from its fields and their metadata."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..corpus import CorpusSpec, is_synthetic, parse_synthetic
from ..errors import ConfigError
from ..families.hf import ENGINES
from ..models import ModelLike, check_device
from ..run_options import ModelRunOptions
from ..sites import Site
from ..store.codecs import codec_usage
from ..store.format import parse_codec

__all__ = ["CacheConfig", "STORAGE_DTYPES", "DEFAULT_SEQ_LEN"]

STORAGE_DTYPES = ("float16", "float32")
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

    def resolved_seq_len(self) -> int:
        """The row length asked for, or the dataset's own (a repeated-random row: 2 x HALF_LEN + 1), or 128."""
        if self.seq_len is not None:
            return self.seq_len
        if isinstance(self.dataset, str) and is_synthetic(self.dataset):
            return parse_synthetic(self.dataset, None).seq_len
        return DEFAULT_SEQ_LEN

    def corpus_spec(self, seq_len: int) -> CorpusSpec:
        """The corpus these options name, cut into rows of ``seq_len`` tokens."""
        return CorpusSpec.from_dataset(
            self.dataset,
            split=self.split,
            text_field=self.text_field,
            config_name=self.dataset_config,
            revision=self.dataset_revision,
            seq_len=seq_len,
            packing=self.packing,
        )
