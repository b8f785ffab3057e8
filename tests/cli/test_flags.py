"""The CLI's options are generated from the config dataclasses (actstore.cli.flags): each
option's flag, help, default and choices are written once, on its field."""

from __future__ import annotations

import argparse
import dataclasses
import importlib

import pytest

from actstore.capture import CacheConfig
from actstore.circuits.config import CircuitJobConfig
from actstore.cli.flags import add_config_flags, cli_fields, config_from_args, flag_of
from actstore.patching.job import PatchJobConfig
from actstore.probes import ProbeConfig

main_module = importlib.import_module("actstore.cli.main")
CONFIGS = {
    "cache": CacheConfig,
    "probe": ProbeConfig,
    "patch": PatchJobConfig,
    "circuit": CircuitJobConfig,
}


def _help(command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: help text is not wrapped
    with pytest.raises(SystemExit):
        main_module.main([command, "--help"])
    return capsys.readouterr().out


def _subparsers(parser: argparse.ArgumentParser, path: str = "actstore"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, f"{path} {name}")


@pytest.mark.parametrize("command", list(CONFIGS))
def test_every_config_option_is_in_help_with_its_metadata_help(command, capsys, monkeypatch):
    text = _help(command, capsys, monkeypatch)
    fields = cli_fields(CONFIGS[command])
    assert fields
    lines = text.splitlines()
    for f in fields:
        at = next((i for i, ln in enumerate(lines) if ln.strip().startswith(flag_of(f))), None)
        assert at is not None, f"{flag_of(f)} missing from `actstore {command} --help`"
        entry = " ".join(lines[at : at + 2])  # the help follows the flag, or is on the next line
        assert f.metadata["help"] in entry, (f.name, entry)


@pytest.mark.parametrize("command", list(CONFIGS))
def test_every_config_field_but_provenance_is_an_option(command):
    cls = CONFIGS[command]
    assert {f.name for f in dataclasses.fields(cls)} - {f.name for f in cli_fields(cls)} == {
        "command_line"
    }


def test_every_option_of_every_command_has_help():
    missing = [
        f"{path} {a.option_strings or a.dest}"
        for path, parser in _subparsers(main_module._parser())
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help
    ]
    assert missing == []


def test_cache_defaults_come_from_the_dataclass(monkeypatch):
    seen = []
    monkeypatch.setattr(
        importlib.import_module("actstore.cli.cache"),
        "cache",
        lambda cfg: seen.append(cfg) or 1 / 0,
    )
    with pytest.raises(ZeroDivisionError):
        main_module.main(["cache", "o.zarr", "--model", "m", "--dataset", "d.txt"])
    (cfg,) = seen
    for f in dataclasses.fields(CacheConfig):
        if f.default is not dataclasses.MISSING and f.name != "command_line":
            assert getattr(cfg, f.name) == f.default, f.name
    assert (cfg.out, cfg.model, cfg.dataset) == ("o.zarr", "m", "d.txt")


@dataclasses.dataclass
class Toy:
    path: str = dataclasses.field(metadata={"help": "where", "positional": True})
    name: str = dataclasses.field(metadata={"help": "required: no default"})
    size: int | None = dataclasses.field(default=7, metadata={"help": "a size", "group": "amount"})
    count: int | None = dataclasses.field(
        default=None, metadata={"help": "a count", "group": "amount"}
    )
    ratio: float = dataclasses.field(default=0.5, metadata={"help": "a ratio"})
    mode: str = dataclasses.field(default="a", metadata={"help": "a mode", "choices": ("a", "b")})
    mb: int | None = dataclasses.field(
        default=None, metadata={"help": "MB", "flag": "--mb-size", "from_cli": lambda v: v * 2**20}
    )
    loud: bool = dataclasses.field(default=True, metadata={"help": "quiet", "flag": "--quiet"})
    keep: bool = dataclasses.field(default=False, metadata={"help": "keep"})
    note: str = "not an option"


def _toy(argv: list[str], skip: tuple[str, ...] = (), **given) -> Toy:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_config_flags(p, Toy, skip=skip)
    return config_from_args(Toy, p.parse_args(argv), skip=skip, **given)


def test_flags_generated_from_a_dataclass():
    assert _toy(["x", "--name", "n"]) == Toy("x", "n")
    got = _toy(
        [
            "x",
            "--name",
            "n",
            "--count",
            "3",
            "--ratio",
            "2",
            "--mode",
            "b",
            "--mb-size",
            "2",
            "--quiet",
            "--keep",
        ],
        note="given",
    )
    assert got == Toy("x", "n", 7, 3, 2.0, "b", 2 * 2**20, False, True, "given")
    assert _toy(["x", "--name", "n"], skip=("ratio",), ratio=9.0).ratio == 9.0
    for bad in (
        ["x"],
        ["x", "--name", "n", "--size", "1", "--count", "2"],
        ["x", "--name", "n", "--mode", "c"],
        ["x", "--name", "n", "--note", "y"],
    ):
        with pytest.raises((SystemExit, argparse.ArgumentError)):
            _toy(bad)


def test_unknown_metadata_key_names_the_known_ones():
    @dataclasses.dataclass
    class Bad:
        x: int = dataclasses.field(default=0, metadata={"help": "x", "flags": "--y"})

    with pytest.raises(
        TypeError, match=r"Bad.x: unknown CLI metadata \['flags'\]; use choices, flag"
    ):
        add_config_flags(argparse.ArgumentParser(), Bad)
