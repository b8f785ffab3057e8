"""The options every job's config shares, written once: where it runs and whether it
talks (:class:`RunOptions`: ``--device``, ``--quiet``, and the provenance the CLI fills
in), and for the jobs that load a model its compute dtype and revision
(:class:`ModelRunOptions`). ``actstore cache``'s CacheConfig and ``actstore probe``'s
ProbeConfig derive from them; the frozen configs of ``actstore patch`` and ``actstore
circuit`` from :data:`FrozenModelRunOptions`, the same fields (a frozen dataclass cannot
derive from a mutable one).

The fields are keyword-only, so a config's own fields keep their places in its
``__init__`` (``PatchJobConfig("actstore-demo", ...)``); :func:`init_fields` lists a
config's fields in that order, the run options last, as ``--help`` shows them
(actstore.cli.flags)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .models import DTYPES

__all__ = ["RunOptions", "ModelRunOptions", "FrozenModelRunOptions", "field_of", "init_fields"]


@dataclass(kw_only=True)
class RunOptions:
    """What every job is told besides its task: where it runs, whether it reports progress,
    and the command that started it."""

    device: str = field(
        default="auto", metadata={"help": "auto (GPU if there is one), cpu, cuda, cuda:N, ..."}
    )
    progress: bool = field(
        default=True, metadata={"help": "no progress bars or messages", "flag": "--quiet"}
    )
    command_line: str | None = None  # provenance; the CLI fills it in


@dataclass(kw_only=True)
class ModelRunOptions(RunOptions):
    """The run options of a job that loads a model: its compute dtype and hub revision."""

    dtype: str | None = field(
        default=None,
        metadata={
            "help": "compute dtype (default float32 on CPU, float16 on GPU)",
            "choices": tuple(DTYPES),
        },
    )
    model_revision: str | None = field(
        default=None, metadata={"help": "hub model revision (branch, tag, commit)"}
    )


def field_of(cls: type, name: str, **changes: Any) -> Any:
    """Field ``name`` of dataclass ``cls`` to declare again in another: its default, its
    metadata and whether it is keyword-only, but for ``changes`` (``default``, or metadata
    keys such as ``help``)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    default = changes.pop("default", f.default)
    return field(
        default=default,
        default_factory=f.default_factory,
        metadata={**f.metadata, **changes},
        kw_only=f.kw_only,
    )


def _frozen(cls: type) -> type:
    """``cls``'s fields again, as a frozen keyword-only dataclass of their own."""
    fields = [(f.name, f.type, field_of(cls, f.name)) for f in dataclasses.fields(cls)]
    return dataclasses.make_dataclass(
        f"Frozen{cls.__name__}",
        fields,
        frozen=True,
        kw_only=True,
        namespace={
            "__doc__": f"{cls.__name__}, frozen: the base of the frozen configs.",
            "__module__": __name__,
        },
    )


#: ModelRunOptions as a frozen dataclass: the base of PatchJobConfig and CircuitJobConfig
FrozenModelRunOptions: Any = _frozen(ModelRunOptions)


def init_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of dataclass ``cls`` in its ``__init__``'s order: its own, then the
    keyword-only ones (the run options)."""
    return sorted(dataclasses.fields(cls), key=lambda f: bool(f.kw_only))
