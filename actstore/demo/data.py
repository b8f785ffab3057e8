"""The demo model's synthetic corpus and its held-out IOI pairs: :mod:`actstore.corpus.demo_text`
(one definition, which the tour, the app and the self-test share), re-exported here, with
its command line:

    python -m actstore.demo.data ioi-pairs pairs.jsonl --n 32   # a pairs file for `actstore patch`
    python -m actstore.demo.data documents docs.jsonl --n 600   # the documents as JSON lines
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..corpus.demo_text import *  # noqa: F401,F403  (the public names, __all__)
from ..corpus.demo_text import HELDOUT_SEED, IOI_TEMPLATES_HELDOUT, ioi_pairs, write_documents
from ..corpus.demo_text import __all__ as __all__  # noqa: F401
from ..jsonl import write_records


def _main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m actstore.demo.data", description="Write demo data files."
    )
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser(
        "ioi-pairs",
        help="held-out IOI pairs for `actstore patch --pairs` (one template: one length)",
    )
    q.add_argument("out")
    q.add_argument("--n", type=int, default=32)
    q.add_argument("--seed", type=int, default=HELDOUT_SEED)
    q.add_argument(
        "--template",
        type=int,
        default=0,
        choices=range(len(IOI_TEMPLATES_HELDOUT)),
        help="which of IOI_TEMPLATES_HELDOUT (default 0)",
    )
    d = sub.add_parser("documents", help="documents as JSON lines {id, text}")
    d.add_argument("out")
    d.add_argument("--n", type=int, default=600)
    d.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.what == "ioi-pairs":
        write_records(a.out, ioi_pairs(a.n, a.seed, template=a.template))
    else:
        write_documents(a.out, a.n, a.seed)
    print(f"wrote {a.n} {a.what.replace('-', ' ')} to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
