"""`actstore verify STORE [--repair]`: read everything, report damaged shards by
array and row range; --repair recomputes exactly those."""

from __future__ import annotations

import argparse
import json

from ..capture import repair_store
from ..store import verify_store

EXAMPLES = """examples:
  actstore verify acts.zarr            # exit 1 when anything is damaged
  actstore verify acts.zarr --repair   # recompute the damaged shards, then check again
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check every chunk's checksum; --repair recomputes damaged shards",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", help="the store to check (a folder or URL)")
    p.add_argument("--repair", action="store_true", help="recompute the damaged shards with the store's own config")
    p.add_argument("--model", help="the store's model, if its recorded name no longer loads (weights are checked)")
    p.add_argument("--device", default="auto", help="where --repair recomputes: auto (GPU if there is one), cpu, cuda")
    p.add_argument("--json", action="store_true", help="print the damage report as JSON")
    p.set_defaults(run=_verify)


def _verify(args: argparse.Namespace) -> int:
    damage = verify_store(args.store, progress=not args.json)
    repaired = False
    if damage and args.repair:
        repair_store(args.store, damage, args.model, args.device, progress=not args.json)
        remaining = verify_store(args.store, progress=False)
        repaired = not remaining
    if args.json:
        print(json.dumps({"damaged": [vars(d) | {"rows": list(d.rows)} for d in damage], "repaired": repaired}, indent=2))
    elif not damage:
        print(f"{args.store}: every finished shard is present and passes its checksum")
    else:
        print(f"{args.store}: {len(damage)} damaged shard objects")
        for d in damage:
            print(f"  {d}")
        print("repaired: every damaged shard recomputed and verified" if repaired else
              "run again with --repair to recompute them" if not args.repair else "repair did not fix everything")
    return 0 if not damage or repaired else 1
