"""`actstore app` starts as the README writes it: `actstore app --port P` (the README's line
plus a free port) as a subprocess in its own session, with a fresh HOME (no
~/.streamlit/credentials.toml to hide Streamlit's first-run e-mail prompt), serves a page
within a minute, prints its URL, prompts for nothing and opens no browser: with stdin
closed (as in the background, under nohup, Slurm or a container) and with stdin a
terminal (a pty, where the prompt used to wait). With --open it opens the URL once, in the
browser $BROWSER names (here a script that records its calls). The server's process group
is killed at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

if not hasattr(os, "killpg"):
    pytest.skip(
        "serves in its own process group and records the browser with a shell script (POSIX)",
        allow_module_level=True,
    )
import pty  # noqa: E402  (POSIX only)

from ..helpers import free_port

HEALTH = "/_stcore/health"  # Streamlit's health endpoint: "ok" once it serves
SERVE_WITHIN = 60.0  # seconds: the bound for a page served
BROWSER_GRACE = 2.0  # seconds after the first page: --open's browser call comes well within this
# Streamlit's first-run prompt
PROMPT_TEXT = (
    "Email:",
    "Welcome to Streamlit",
    "onboarding emails",
)
STATS_TEXT = (
    "Collecting usage statistics"  # what Streamlit prints when usage stats are on by default
)
# loopback, never through a proxy
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _actstore() -> list[str]:
    """The `actstore` command the README runs (the installed script beside this interpreter)."""
    script = Path(sys.executable).with_name("actstore")
    return [str(script)] if script.exists() else [sys.executable, "-m", "actstore"]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with _DIRECT.open(url, timeout=2) as r:
            return r.status, r.read()
    except OSError:
        return 0, b""


class Served:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path, calls: Path, home: Path):
        self.proc, self.url, self.log, self.calls, self.home = proc, url, log, calls, home

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def browser_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def wait_until_serving(self) -> float:
        """Seconds until / and the health endpoint answer 200 and the URL is printed; fails
        (with the server's output) if that takes over SERVE_WITHIN or the server exits."""
        start = time.monotonic()
        while True:
            page, health = _get(self.url + "/"), _get(self.url + HEALTH)
            if page[0] == 200 and health == (200, b"ok") and self.url in self.output():
                return time.monotonic() - start
            if self.proc.poll() is not None:
                pytest.fail(
                    f"`actstore app` exited ({self.proc.returncode}) before serving:\n{self.output()[-3000:]}"
                )
            if time.monotonic() - start > SERVE_WITHIN:
                pytest.fail(
                    f"`actstore app` served nothing within {SERVE_WITHIN:.0f} s:\n{self.output()[-3000:]}"
                )
            time.sleep(0.25)


@contextlib.contextmanager
def serve(tmp_path: Path, *flags: str, stdin: str = "closed") -> Iterator[Served]:
    """`actstore app --port P FLAGS` with stdin closed (/dev/null) or a terminal (a pty)."""
    port = free_port()
    home = tmp_path / "home"
    home.mkdir()
    calls = tmp_path / "browser-calls"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    browser.chmod(0o755)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_") and "DISPLAY" not in k
    }
    env.update(HOME=str(home), BROWSER=str(browser), HF_HUB_OFFLINE="1")
    log = tmp_path / "server.log"
    master = slave = None
    if stdin == "terminal":
        master, slave = pty.openpty()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*_actstore(), "app", "--port", str(port), *flags],
            stdin=subprocess.DEVNULL if slave is None else slave,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        yield Served(proc, f"http://localhost:{port}", log, calls, home)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and anything it started (the opener)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for fd in (master, slave):
            if fd is not None:
                os.close(fd)


def _check_quiet(s: Served) -> None:
    """No prompt, no usage statistics, nothing written to ~/.streamlit."""
    out = s.output()
    assert not [t for t in PROMPT_TEXT if t in out], f"it prompted:\n{out}"
    assert STATS_TEXT not in out, out
    assert not (s.home / ".streamlit").exists(), sorted(
        map(str, (s.home / ".streamlit").rglob("*"))
    )


def test_serves_at_once_without_a_prompt_or_a_browser(tmp_path):
    """Stdin closed: the prompt used to read EOF, and the server exited without serving."""
    with serve(tmp_path, stdin="closed") as s:
        s.wait_until_serving()
        time.sleep(BROWSER_GRACE)
        assert s.proc.poll() is None, s.output()
        assert s.browser_calls() == []
        _check_quiet(s)


def test_open_opens_the_url_once_and_a_terminal_is_not_prompted(tmp_path):
    """Stdin a terminal (where the prompt used to wait for an answer), and --open."""
    with serve(tmp_path, "--open", stdin="terminal") as s:
        s.wait_until_serving()
        deadline = time.monotonic() + BROWSER_GRACE
        while not s.browser_calls() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # a second call would come as quickly
        assert s.browser_calls() == [s.url], s.output()
        _check_quiet(s)
