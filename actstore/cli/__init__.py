"""The command line: one thin module per command (flags -> config -> one library call);
:mod:`actstore.cli.main` parses and dispatches."""

from .main import main

__all__ = ["main"]
