"""`actstore app`'s command line: bad input fails before serving, naming the fix; the
Streamlit command it runs (headless: no e-mail prompt, no usage statistics, no browser) and
the opener --open starts. Serving itself is tests/app/test_app_start.py's (as the README
writes it, stdin closed or a terminal) and tests/app/test_browser.py's."""

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


class Served(Exception):
    """Raised by the os.execve stand-in: what `actstore app` would have run."""


@pytest.fixture
def launched(monkeypatch):
    """`actstore app ARGS` up to the exec of Streamlit: returns (Streamlit's flags, opener commands)."""
    import subprocess

    import actstore.cli.app as cli_app

    openers: list[list[str]] = []

    def execve(path, argv, env):
        raise Served(argv)

    class Popen:
        def __init__(self, argv, **kw):
            openers.append(argv)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(cli_app.os, "execve", execve)
    monkeypatch.setattr(subprocess, "Popen", Popen)

    def run(*args: str) -> tuple[dict[str, str], list[list[str]]]:
        with pytest.raises(Served) as e:
            main(["app", *args])
        argv = e.value.args[0]
        assert argv[1:4] == ["-m", "streamlit", "run"]
        return dict(a[2:].split("=", 1) for a in argv[5:]), openers

    return run


@pytest.mark.parametrize("args", [(), ("--headless",)])
def test_serves_headless_without_prompt_stats_or_browser(launched, args):
    """--headless (the default now) is still accepted and changes nothing."""
    flags, openers = launched("--port", "8600", *args)
    assert {
        k: flags[k]
        for k in (
            "server.headless",
            "server.showEmailPrompt",
            "browser.gatherUsageStats",
            "server.port",
        )
    } == {
        "server.headless": "true",
        "server.showEmailPrompt": "false",
        "browser.gatherUsageStats": "false",
        "server.port": "8600",
    }
    assert openers == []


@pytest.mark.parametrize(
    "address, url",
    [
        ("localhost", "http://localhost:8600"),
        ("0.0.0.0", "http://localhost:8600"),
        ("10.1.2.3", "http://10.1.2.3:8600"),
        ("::1", "http://[::1]:8600"),
    ],
)
def test_open_starts_the_opener_on_the_served_url(launched, address, url):
    from actstore.app import opener

    flags, openers = launched("--port", "8600", "--address", address, "--open")
    assert flags["server.headless"] == "true" and flags["server.address"] == address
    assert len(openers) == 1 and openers[0][2:4] == [opener.__file__, url]


def test_headless_with_open_is_refused(capsys):
    assert main(["app", "--headless", "--open"]) == 2
    assert "drop --headless" in capsys.readouterr().err


def test_the_opener_gives_up_when_the_server_stopped(monkeypatch):
    import subprocess
    import webbrowser

    from actstore.app import opener

    monkeypatch.setattr(webbrowser, "open", lambda url: pytest.fail(f"opened {url}"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert opener.wait_and_open("http://127.0.0.1:9", gone.pid, timeout=30) is False
