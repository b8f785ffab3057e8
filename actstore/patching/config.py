"""`actstore patch`'s options: :class:`PatchJobConfig` (its flags are generated from the
fields' metadata, see actstore.cli.flags), the sweeps it runs and its methods."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..models import ModelLike
from ..run_options import FrozenModelRunOptions, field_of
from . import table, tasks
from .table import SweepRow

__all__ = ["PatchJobConfig", "SWEEPS", "METHODS"]

#: the sweeps `actstore patch` runs, by name: actstore.patching.table's rows (each row's
#: function, in actstore.patching and actstore.patching.attribution, and the sites it reads)
SWEEPS: Mapping[str, SweepRow] = table.SWEEPS

METHODS = ("exact", "attribution", "both")


@dataclass(frozen=True)
class PatchJobConfig(FrozenModelRunOptions):
    """One `actstore patch` run; its flags are generated from these fields and their
    metadata (see actstore.cli.flags), and from the run options (device, dtype,
    model_revision, progress: actstore.run_options)."""

    model: ModelLike = field(
        metadata={  # or, in Python, a TransformerBridge in memory
            "help": "hub name (gpt2 .. gpt2-xl), local folder, or actstore-demo"
        }
    )
    pairs: str | None = field(
        default=None, metadata={"help": "JSON lines: clean, corrupted, answer, wrong (or --task)"}
    )
    sweep: str = field(
        default="resid_pre",
        metadata={  # a key of SWEEPS
            "help": "what to patch (default resid_pre): a sweep of transformer_lens.patching, listed below",
            "choices": tuple(SWEEPS),
            "metavar": "SWEEP",
        },
    )
    store: str | None = field(
        default=None,
        metadata={
            "help": "read the clean activations from this store (cached from the clean prompts first if it does not exist)"
        },
    )
    out: str | None = field(
        default=None,
        metadata={
            "help": "results Zarr group (default: the store's results/, else PAIRS.patch.zarr)"
        },
    )
    metric: str = field(
        default="normalised",
        metadata={  # 'normalised': 0 corrupted, 1 clean
            "help": "what the heatmap shows (both are saved)",
            "choices": ("normalised", "logit_diff"),
        },
    )
    figure: str | None = field(
        default=None,
        metadata={"help": "heatmap PNG path (default: next to the results, OUT.SWEEP.png)"},
    )
    # the batch of each forward
    batch_pairs: int = field(default=16, metadata={"help": "pairs per sweep call"})
    memory_budget: int | None = field(
        default=None,
        metadata={  # bytes; None: actstore.patching's default
            "help": "activation memory of one batched forward, MB",
            "flag": "--memory-budget-mb",
            "from_cli": lambda mb: mb * 2**20,
        },
    )
    overwrite: bool = field(
        default=False, metadata={"help": "replace this sweep's results in an existing group"}
    )
    command_line: str = field_of(FrozenModelRunOptions, "command_line", default="")
    method: str = field(
        default="exact",
        metadata={
            "help": "exact (activation patching, default), attribution (gradient estimate: one forward + backward per "
            "batch) or both (stored side by side, with their Pearson correlation and a scatter plot)"
        },
    )
    task: str | None = field(
        default=None,
        metadata={
            "help": f"generate the pairs of a standard task instead: {', '.join(tasks.TASKS)}"
        },
    )
    n_pairs: int | None = field(
        default=None, metadata={"help": "pairs to generate (default 16; factual: every fact)"}
    )
    seed: int = field(
        default=0, metadata={"help": "the generated pairs are a function of the seed (default 0)"}
    )
    facts: str | None = field(
        default=None,
        metadata={
            "help": '--task factual: JSON lines of facts {"prompt", "answer"[, "corrupted_prompt", "wrong"]}'
        },
    )
    write_pairs: str | None = field(
        default=None,
        metadata={
            "help": "also save the generated pairs to FILE (the --pairs format)",
            "metavar": "FILE",
        },
    )
