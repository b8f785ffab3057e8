"""`actstore app`'s command line: bad input fails before serving, naming the fix (serving
itself is tests/app/test_browser.py's)."""

from __future__ import annotations

import sys

import pytest

from actstore.cli import main


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["app", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "actstore app --model gpt2 --store acts.zarr" in out and "--port" in out


def test_missing_store_is_refused_before_serving(tmp_path, capsys):
    assert main(["app", "--store", str(tmp_path / "nope.zarr")]) == 2
    assert "No store at" in capsys.readouterr().err


def test_missing_extra_names_the_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "streamlit.web", None)  # as if streamlit were not installed
    assert main(["app"]) == 2
    assert "pip install 'actstore[app]'" in capsys.readouterr().err


def test_bad_port_is_refused(capsys):
    assert main(["app", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
