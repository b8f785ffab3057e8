"""`actstore circuit`'s options: :class:`CircuitJobConfig`, whose flags are generated from
the fields' metadata (actstore.cli.flags). The model and pair-source options are `actstore
patch`'s own fields (:class:`~actstore.patching.config.PatchJobConfig`), reused with their
help text, so the two commands take pairs the same way; the run options (device, dtype,
model_revision, progress) are the base both derive from (actstore.run_options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..models import ModelLike
from ..patching.config import PatchJobConfig
from ..run_options import FrozenModelRunOptions, field_of
from .circuit import SELECTIONS
from .clean import STORE_SITES as CLEAN_SITES
from .metrics import KINDS as METRICS

__all__ = ["CircuitJobConfig", "METHODS", "METRICS", "CLEAN_SITES"]

#: edge scores: exact (one patched forward per edge, batched) and the attribution estimates
METHODS = ("exact", "eap", "eap-ig-inputs", "eap-ig-activations")
#: METRICS (circuits.metrics.KINDS) and CLEAN_SITES (circuits.clean.STORE_SITES, the clean activations
#: edge scores read from a store: every upstream node's output) are defined where they are used


def _patch_field(name: str, **meta: Any) -> Any:
    """`actstore patch`'s field ``name`` (default and metadata), ``meta`` overriding."""
    return field_of(PatchJobConfig, name, **meta)


@dataclass(frozen=True)
class CircuitJobConfig(FrozenModelRunOptions):
    """One `actstore circuit` run; its flags are generated from these fields and their
    metadata (see actstore.cli.flags), and from the run options (device, dtype,
    model_revision, progress: actstore.run_options)."""

    model: ModelLike = _patch_field("model")
    pairs: str | None = _patch_field("pairs")
    task: str | None = _patch_field("task")
    n_pairs: int | None = _patch_field("n_pairs")
    seed: int = _patch_field("seed")
    facts: str | None = _patch_field("facts")
    write_pairs: str | None = _patch_field("write_pairs")
    method: str = field(
        default="exact",
        metadata={  # a comma list of METHODS
            "help": f"edge scores, one or a comma list: {', '.join(METHODS)} (default exact); with exact and another, "
            "their Pearson r, Spearman rank correlation and top-N overlap"
        },
    )
    steps: int = field(
        default=5, metadata={"help": "integrated-gradient steps of the eap-ig methods (default 5)"}
    )
    metric: str = field(
        default="logit-diff",
        metadata={  # what edge scores and faithfulness measure
            "help": "logit-diff (answer - wrong at the last position; default), norm-logit-diff (0 corrupted, 1 clean) "
            "or kl (KL divergence from the clean distribution)",
            "choices": METRICS,
        },
    )
    top: int = field(
        default=50,
        metadata={
            "help": "edges selected for the circuit drawn and reported (default 50)",
            "metavar": "N",
        },
    )
    selection: str = field(
        default="top-n",
        metadata={
            "help": "top-n (the N best edges) or greedy (EAP-IG's: grown from the logits, each edge's downstream node "
            "already in the circuit); either pruned to paths from input to logits",
            "choices": SELECTIONS,
        },
    )
    signed: bool = field(
        default=False, metadata={"help": "rank edges by signed score, not by absolute value"}
    )
    store: str | None = field(
        default=None,
        metadata={
            "help": f"read the clean activations from this store (cached with --sites {CLEAN_SITES})"
        },
    )
    clean_rows: str | None = field(
        default=None,
        metadata={
            "help": "the store rows of the clean prompts, A:B (default: found by their tokens)",
            "metavar": "A:B",
        },
    )
    out: str | None = field(
        default=None,
        metadata={
            "help": "results Zarr group (default PAIRS.circuit.zarr or "
            "TASK.circuit.zarr); figures go next to it"
        },
    )
    batch_pairs: int = field(
        default=16,
        metadata={
            "help": "pairs per batch: each method scores them, and measures "
            "faithfulness, a batch at a time; under torchrun the batches "
            "are shared out (default 16)"
        },
    )
    memory_budget: int | None = _patch_field("memory_budget")
    overwrite: bool = _patch_field(
        "overwrite",
        help="replace these methods' results in an existing group of the "
        "same model, pairs and settings; a group of another is replaced whole, figures too",
    )
    command_line: str = _patch_field("command_line")

    @property
    def methods(self) -> tuple[str, ...]:
        """--method as a tuple, in the order given, without repeats."""
        return tuple(dict.fromkeys(m.strip() for m in self.method.split(",") if m.strip()))
