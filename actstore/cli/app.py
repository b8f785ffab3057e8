"""`actstore app [--model NAME_OR_DIR] [--store PATH ...] [--port P] [--open]`: serve the
interactive explorer (actstore/app, the optional extra ``actstore[app]``) on localhost.

It serves at once, whether or not stdin is a terminal (in the background, under nohup,
Slurm or a container too): Streamlit runs headless, so it never stops at its first-run
e-mail prompt, opens no browser and prints the URL; with --open, actstore/app/opener.py
opens the URL once the server answers. No usage statistics are sent, and nothing is
written to ~/.streamlit."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from ..errors import ConfigError
from ..location import is_url
from ..resources import DEMO_MODEL
from .flags import add_command

EXAMPLES = """examples:
  actstore app                                   # the demo model, offline: prints http://localhost:8501
  actstore app --open                            # the same, opened in your browser once it serves
  actstore app --model gpt2 --store acts.zarr    # a hub model and a store (repeat --store for more)
  actstore app --port 8600                       # on a server: ssh -L 8600:localhost:8600 HOST
needs: pip install 'actstore[app]'
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "app",
        help="serve the interactive explorer (prompt and store pages) on localhost",
        epilog=EXAMPLES,
    )
    p.add_argument(
        "--model",
        default=DEMO_MODEL,
        help=f"hub name, local folder or {DEMO_MODEL} (default, offline)",
    )
    p.add_argument(
        "--store",
        action="append",
        default=[],
        help="a store to explore (a folder or URL); repeatable",
    )
    p.add_argument("--port", type=int, default=8501, help="the port to serve on (default 8501)")
    p.add_argument(
        "--address", default="localhost", help="the address to serve on (default localhost)"
    )
    p.add_argument(
        "--open",
        action="store_true",
        dest="open_browser",
        help="open the app in a browser ($BROWSER, else the desktop's) once it serves; "
        "by default only its URL is printed",
    )
    p.add_argument(
        "--headless",
        action="store_true",
        help="deprecated, and the default now: no browser is opened unless --open (still accepted)",
    )
    p.set_defaults(run=_app)


def _app(
    args: argparse.Namespace,
) -> int:  # returns only on an error: serving replaces this process
    try:
        import plotly  # noqa: F401
        import streamlit.web  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"`actstore app` needs the app extra ({e.name} is missing): "
            "pip install 'actstore[app]'."
        ) from e
    missing = [s for s in args.store if not is_url(s) and not os.path.exists(s)]
    if missing:
        raise ConfigError(
            f"No store at {', '.join(map(repr, missing))}; pass --store with a store's folder or URL."
        )
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a port; pass one in 1..65535, e.g. 8501.")
    if args.headless and args.open_browser:
        raise ConfigError(
            "--headless (no browser, the default now) contradicts --open; drop --headless."
        )
    from ..launch import APP_MAIN as MAIN
    from ..launch import MODEL_ENV, STORES_ENV

    env = {
        **os.environ,
        MODEL_ENV: args.model,
        STORES_ENV: "\n".join(os.path.abspath(s) if not is_url(s) else s for s in args.store),
    }
    # headless: no first-run e-mail prompt on the terminal (it stops a server whose stdin is not one) and no
    # browser opened by Streamlit; showEmailPrompt off as well, as Streamlit documents. No usage stats, no
    # file watching, no Deploy button.
    flags = {
        "server.port": args.port,
        "server.address": args.address,
        "server.headless": True,
        "server.showEmailPrompt": False,
        "browser.gatherUsageStats": False,
        "server.fileWatcherType": "none",
        "global.developmentMode": False,
        "client.toolbarMode": "viewer",
    }
    # Streamlit's own command line (`streamlit run`, its public interface) in place of this process,
    # so that Ctrl-C and a terminate signal reach the server itself
    cmd = [sys.executable, "-m", "streamlit", "run", MAIN] + [
        f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in flags.items()
    ]
    if args.open_browser:
        _open_when_serving(served_url(args.address, args.port))
    os.execve(sys.executable, cmd, env)


def served_url(address: str, port: int) -> str:
    """The URL a browser on this machine opens for a server on ``address``."""
    host = "localhost" if address in ("", "0.0.0.0", "::") else address  # noqa: S104  (a wildcard: any local name)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _open_when_serving(url: str) -> None:
    """Start actstore/app/opener.py beside the server this process becomes (same pid after
    execve): a fresh interpreter with the standard library only (-I), which detaches at once."""
    from ..launch import APP_OPENER

    proc = subprocess.Popen(
        [sys.executable, "-I", APP_OPENER, url, str(os.getpid())], stdin=subprocess.DEVNULL
    )
    # it forks and its first process exits at once: nothing left for the server to reap
    if hasattr(os, "fork"):
        proc.wait()
