"""`actstore app [--model NAME_OR_DIR] [--store PATH ...] [--port P]`: serve the
interactive explorer (actstore/app, the optional extra ``actstore[app]``) on localhost."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import ConfigError
from ..location import is_url
from ..resources import DEMO_MODEL

EXAMPLES = """examples:
  actstore app                                   # the demo model, offline: http://localhost:8501
  actstore app --model gpt2 --store acts.zarr    # a hub model and a store (repeat --store for more)
  actstore app --port 8600 --headless            # no browser opened (on a server: ssh -L 8600:localhost:8600)
needs: pip install 'actstore[app]'
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="serve the interactive explorer (prompt and store pages) on localhost",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEMO_MODEL, help=f"hub name, local folder or {DEMO_MODEL} (default, offline)")
    p.add_argument("--store", action="append", default=[], help="a store to explore (a folder or URL); repeatable")
    p.add_argument("--port", type=int, default=8501, help="the port to serve on (default 8501)")
    p.add_argument("--address", default="localhost", help="the address to serve on (default localhost)")
    p.add_argument("--headless", action="store_true", help="do not open a browser")
    p.set_defaults(run=_app)


def _app(args: argparse.Namespace) -> int:  # returns only on an error: serving replaces this process
    try:
        import plotly  # noqa: F401
        import streamlit.web  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"`actstore app` needs the app extra ({e.name} is missing): "
                          "pip install 'actstore[app]'.") from e
    missing = [s for s in args.store if not is_url(s) and not os.path.exists(s)]
    if missing:
        raise ConfigError(f"No store at {', '.join(map(repr, missing))}; pass --store with a store's folder or URL.")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a port; pass one in 1..65535, e.g. 8501.")
    from ..app import MAIN, MODEL_ENV, STORES_ENV

    env = {**os.environ, MODEL_ENV: args.model,
           STORES_ENV: "\n".join(os.path.abspath(s) if not is_url(s) else s for s in args.store)}
    flags = {"server.port": args.port, "server.address": args.address, "server.headless": args.headless,
             "browser.gatherUsageStats": False, "server.fileWatcherType": "none", "global.developmentMode": False,
             "client.toolbarMode": "viewer"}  # no usage stats, no file watching, no Deploy button
    # Streamlit's own command line (`streamlit run`, its public interface) in place of this process,
    # so that Ctrl-C and a terminate signal reach the server itself
    cmd = [sys.executable, "-m", "streamlit", "run", MAIN] + [f"--{k}={str(v).lower() if isinstance(v, bool) else v}"
                                                             for k, v in flags.items()]
    os.execve(sys.executable, cmd, env)
