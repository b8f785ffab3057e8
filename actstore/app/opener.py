"""`actstore app --open`: open the app in the user's browser once its server answers.

Streamlit opens a browser only when it is not headless, and then it may first prompt for
an e-mail address on the terminal; `actstore app` always serves headless (no prompt, no
browser) and, with --open, starts this script beside the server. It waits until the
server's health endpoint answers, opens the URL once with Python's webbrowser (``$BROWSER``
if set, else the desktop's browser) and exits. It uses the standard library only, so
``python -I opener.py URL PID`` starts in a few milliseconds, and it detaches at once (a
double fork) so that the server never has a child of ours to reap.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
import webbrowser

__all__ = ["wait_and_open", "health_ok", "HEALTH"]

HEALTH = "/_stcore/health"  # Streamlit's health endpoint: "ok" once the server serves
TIMEOUT = 120.0  # seconds to wait for the server (it starts in a few on a quiet machine)
# localhost: never through $http_proxy
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def health_ok(url: str) -> bool:
    """Whether the Streamlit server at ``url`` answers its health check."""
    try:
        with _DIRECT.open(url.rstrip("/") + HEALTH, timeout=2) as r:
            return bool(r.status == 200 and r.read().strip() == b"ok")
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_and_open(
    url: str, server_pid: int | None = None, timeout: float = TIMEOUT, poll: float = 0.2
) -> bool:
    """Open ``url`` in a browser once the server answers; False (and a line on stderr) if the
    server stopped or did not answer within ``timeout`` seconds, or no browser could be found."""
    deadline = time.monotonic() + timeout
    while not health_ok(url):
        if server_pid is not None and not _alive(server_pid):
            return False  # the server stopped: it printed why
        if time.monotonic() > deadline:
            print(
                f"actstore app: {url} did not answer within {timeout:.0f} s, so no browser was opened; "
                "open it yourself once the server prints its URL.",
                file=sys.stderr,
            )
            return False
        time.sleep(poll)
    if not webbrowser.open(url):
        print(
            f"actstore app: no browser found to open {url}; open it yourself (or set $BROWSER).",
            file=sys.stderr,
        )
        return False
    return True


def main(argv: list[str]) -> int:
    url, pid = argv[0], int(argv[1])
    if hasattr(os, "fork") and os.fork() > 0:
        # the launcher waits for this; the grandchild below is reaped by init, not by the server
        os._exit(0)
    return 0 if wait_and_open(url, pid) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
