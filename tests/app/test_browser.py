"""The app in a real browser: `actstore app` served on localhost, Debian's headless
Chromium (driven by playwright, no browser download) types a prompt, waits for the logit
lens figure and the patching figure, and saves screenshots. Any browser console error,
page exception or Streamlit exception box fails the test.

Skipped when /usr/bin/chromium is missing (apt-get install chromium), unless
ACTSTORE_REQUIRE_BROWSER=1 (CI sets it: there a missing browser fails). Screenshots go to
$ACTSTORE_SCREENSHOTS or a temporary folder, printed; ACTSTORE_SCREENSHOTS=docs/img
refreshes the README's pictures."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ..helpers import free_port

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROMPT = (
    "When Nina and Eric went to the farm. Then Eric gave the hat to"  # words of the demo vocabulary
)
WAIT_MS = 240_000  # the first figure waits for the model to load and the prompt to be cached (CPU, shared)


def _browser_or_skip() -> None:
    if not os.path.exists(CHROMIUM):
        reason = f"no browser at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("ACTSTORE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason}, and ACTSTORE_REQUIRE_BROWSER=1 requires the browser test")
        pytest.skip(reason)


@pytest.fixture
def served(tmp_path: Path):
    """`python -m actstore app --port P` as a subprocess (no browser of its own: the default); yields its URL."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "actstore", "app", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://localhost:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(
                    f"`actstore app` did not come up: {(tmp_path / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_for_figure(page, title: str) -> None:
    """Wait until a plotly figure whose title contains ``title`` is drawn."""
    page.locator(".js-plotly-plot .gtitle", has_text=title).first.wait_for(
        state="visible", timeout=WAIT_MS
    )


def _wait_until_done(page) -> None:
    """Wait until the script run is over (Streamlit's running indicator is gone) and the figures settle."""
    page.locator("[data-testid='stStatusWidget']").wait_for(state="hidden", timeout=WAIT_MS)
    page.wait_for_timeout(1000)


def test_app_in_chromium(served: str, tmp_path: Path) -> None:
    _browser_or_skip()
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    shots = Path(os.environ.get("ACTSTORE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {shots}")
    problems: list[str] = []
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        page = ctx.new_page()
        page.on(
            "console",
            lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: problems.append(f"page exception: {e}"))
        page.on(
            "requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})")
        )
        page.goto(served, wait_until="domcontentloaded")

        box = page.get_by_role("textbox", name="Prompt")
        box.wait_for(timeout=WAIT_MS)
        box.fill(PROMPT)
        box.press("Enter")
        page.get_by_role("link", name="Logit lens").click()
        _wait_for_figure(page, "Logit lens")
        # the typed prompt's tokens
        page.locator(".js-plotly-plot", has_text="farm").first.wait_for(timeout=WAIT_MS)
        _wait_until_done(page)
        page.screenshot(path=str(shots / "app-logit-lens.png"), full_page=True)

        if importlib.util.find_spec("actstore.app.views.patching") is not None:
            page.get_by_role("link", name="Patching").click()
            page.locator("[data-testid='stMain'] .js-plotly-plot").first.wait_for(
                state="visible", timeout=WAIT_MS
            )
            _wait_until_done(page)
            page.screenshot(path=str(shots / "app-patching.png"), full_page=True)
        else:
            print("no patching page in this checkout: its step is skipped")

        exceptions = page.locator("[data-testid='stException']").all_inner_texts()
        problems += [f"app exception: {t}" for t in exceptions]
        ctx.close()
    assert not problems, "\n".join(problems)
