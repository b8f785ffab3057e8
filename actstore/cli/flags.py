"""Command-line flags generated from the config dataclasses: each option is written once,
as a field of its config (CacheConfig, ProbeConfig, PatchJobConfig, CircuitJobConfig, or the
run options they derive from, actstore.run_options), with its help text and CLI details in
the field's metadata:

    seq_len: int | None = field(default=None, metadata={"help": "tokens per row (default 128)"})

A field is a command-line option when its metadata has ``help``; the other keys are

- ``flag``: the spelling, default ``--field-name``; ``positional``: True for an argument;
- ``choices``, ``metavar``, ``nargs``, ``required``: as argparse (a field without a
  default is required);
- ``group``: the fields of one group name are mutually exclusive;
- ``from_cli``: turns the parsed value into the field's (e.g. MB -> bytes).

The type comes from the annotation (int, float, str; ``X | None`` -> X). A bool field is
a switch: with default False its flag sets it, with default True its flag (``--quiet``,
``--no-fsync``) clears it. The default is the field's, so it is written once too.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import types
import typing
from collections.abc import Collection
from typing import Any, TypeVar

from ..run_options import init_fields

__all__ = [
    "add_command",
    "add_config_flags",
    "config_from_args",
    "cli_fields",
    "flag_of",
    "command_line",
]

T = TypeVar("T")
_KEYS = frozenset(
    {"help", "flag", "positional", "choices", "metavar", "nargs", "required", "group", "from_cli"}
)


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    epilog: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand of ``actstore`` whose epilog (its examples) keeps its line breaks."""
    return sub.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def cli_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of config class ``cls`` that are command-line options, in the order of
    its ``__init__``: its own fields, then the run options (actstore.run_options)."""
    out = []
    for f in init_fields(cls):
        unknown = set(f.metadata) - _KEYS
        if unknown:
            raise TypeError(
                f"{cls.__name__}.{f.name}: unknown CLI metadata {sorted(unknown)}; "
                f"use {', '.join(sorted(_KEYS))}."
            )
        if "help" in f.metadata:
            out.append(f)
    return out


def flag_of(f: dataclasses.Field[Any]) -> str:
    """The option's spelling: ``--seq-len`` for seq_len unless the metadata says otherwise."""
    if f.metadata.get("positional"):
        return f.name
    return str(f.metadata.get("flag", "--" + f.name.replace("_", "-")))


def _annotation(cls: type, f: dataclasses.Field[Any]) -> Any:
    """The field's type; a string annotation is evaluated in its module (its forward
    references, e.g. inside ModelLike, are left as they are)."""
    if not isinstance(f.type, str):
        return f.type
    try:
        return eval(f.type, vars(sys.modules[cls.__module__]))  # noqa: S307 - an annotation of our own code
    except Exception:  # noqa: BLE001 - a name only imported for type checkers: not one plain type
        return str


def _value_type(annotation: Any) -> Any:
    """int for ``int | None``; str for anything that is not one plain type."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = args[0] if len(args) == 1 else str
    return annotation if annotation in (int, float, str, bool) else str


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def add_config_flags(
    parser: argparse.ArgumentParser, cls: type, *, skip: Collection[str] = ()
) -> None:
    """Add one argparse option per CLI field of ``cls`` (see the module docstring), but
    those in ``skip`` (which the command then fills in itself)."""
    groups: dict[str, Any] = {}
    for f in cli_fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        kw: dict[str, Any] = {"help": meta["help"]}
        kind = _value_type(_annotation(cls, f))
        default = _default(f)
        if kind is bool:
            kw.update(action="store_false" if default else "store_true", default=default)
        else:
            kw.update(type=kind, default=default)
            for key in ("choices", "nargs"):
                if key in meta:
                    kw[key] = meta[key]
            # choices show as {a,b}
            if "metavar" in meta or not ("choices" in meta or meta.get("positional")):
                kw["metavar"] = meta.get(
                    "metavar", flag_of(f).lstrip("-").replace("-", "_").upper()
                )
        required = meta.get(
            "required",
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        if meta.get("positional"):
            if not required:
                kw["nargs"] = "?"
        else:
            kw["dest"] = f.name
            if required:
                kw["required"] = True
        target: Any = parser
        if "group" in meta:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["group"]]
        target.add_argument(flag_of(f), **kw)


def config_from_args(
    cls: type[T], args: argparse.Namespace, *, skip: Collection[str] = (), **given: Any
) -> T:
    """The config ``cls`` of parsed ``args``: every CLI field (but ``skip``) from its option,
    through its ``from_cli`` where the value is given; ``given`` fills the rest."""
    values: dict[str, Any] = {}
    for f in cli_fields(cls):
        if f.name in skip:
            continue
        v = getattr(args, f.name)
        convert = f.metadata.get("from_cli")
        values[f.name] = convert(v) if convert is not None and v is not None else v
    return cls(**values, **given)


def command_line(args: argparse.Namespace) -> str:
    """The command as typed (``actstore cache ...``): the provenance a job records."""
    return shlex.join(["actstore", *getattr(args, "argv", [])])
