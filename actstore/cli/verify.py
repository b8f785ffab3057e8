"""`actstore verify STORE [--repair]`: check every object of a store, report what is
damaged or not done (by array and row range) and what --repair does about each;
--repair rebuilds and recomputes it, then checks again."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from contextlib import nullcontext

from ..capture import repair_store
from ..capture.lock import LockHolder, lock_holder, lock_note, store_lock
from ..location import is_url
from ..store import ActivationStore, Damage, verify_store
from ..store.verify import FIXES
from .flags import add_command

EXAMPLES = """examples:
  actstore verify acts.zarr            # exit 1 when anything is damaged or not done
  actstore verify acts.zarr --repair   # rebuild and recompute what is, then check again
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "verify",
        help="check a store's metadata, checksums and manifest; --repair fixes what it finds",
        epilog=EXAMPLES,
    )
    p.add_argument("store", help="the store to check (a folder or URL)")
    p.add_argument(
        "--repair",
        action="store_true",
        help="rebuild damaged metadata and statistics, recompute damaged rows and finish rows not done, "
        "with the store's own config",
    )
    p.add_argument(
        "--model",
        help="the store's model, if its recorded name no longer loads (weights are checked)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="where --repair recomputes: auto (GPU if there is one), cpu, cuda",
    )
    p.add_argument("--json", action="store_true", help="print the damage report as JSON")
    p.set_defaults(run=_verify)


def _report(
    path: str, damage: Sequence[Damage], repairing: bool, writing: LockHolder | None = None
) -> list[str]:
    """What is wrong, then what to do about each kind of it; while a live run holds the
    lock (``writing``), what is found may be its work in progress: wait for it."""
    if not damage:
        return [
            f"{path}: complete; every object is present, passes its checksum and matches the store's metadata"
        ]
    lines = [f"{path}: {len(damage)} problem{'s' if len(damage) != 1 else ''}"] + [
        f"  {d}" for d in damage
    ]
    fixes = sorted({d.fix for d in damage}, key=list(FIXES).index)
    if writing is not None:
        return lines + [
            f"a run is writing the store ({writing.who}, lock {writing.path}), so these may be its work in "
            "progress: wait for that run to finish, then verify again (--repair is refused while it "
            f"runs); {writing.if_gone('verify again')}"
        ]
    if set(fixes) == {"finish"}:
        meta = ActivationStore.open(path).meta
        return lines + [f"the store is incomplete; {meta.finish_hint(path)}"]
    if fixes == ["manual"]:
        return lines + [f"left to do: {FIXES['manual']}"]
    if repairing:
        return lines + [
            "repair did not fix everything; left: " + "; ".join(FIXES[f] for f in fixes)
        ]
    return lines + ["run again with --repair: " + "; ".join(FIXES[f] for f in fixes)]


def _verify(args: argparse.Namespace) -> int:
    """--repair takes the store's lock first (refused, nothing changed, while a run holds it),
    and holds it while it checks, repairs and checks again."""
    local = not is_url(args.store)  # (object stores have no lock file)
    before = lock_holder(args.store) if local and not args.repair else None
    if args.repair:
        # no store, or its root damaged: said before a lock file is made beside it
        ActivationStore.open(args.store)
    with store_lock(args.store) if args.repair and local else nullcontext():
        damage = verify_store(args.store, progress=not args.json)
        remaining = damage
        if damage and args.repair and any(d.fix != "manual" for d in damage):
            repair_store(args.store, damage, args.model, args.device, progress=not args.json)
            remaining = verify_store(args.store, progress=False)
    holder = lock_holder(args.store) if local else None
    # live during the check
    writing = next((h for h in (holder, before) if h is not None and h.writing), None)
    lock = None if holder is None else lock_note(args.store)
    if args.json:
        report = {
            "damaged": [
                vars(d) | {"rows": None if d.rows is None else list(d.rows)} for d in damage
            ],
            "repaired": bool(damage) and not remaining,
            "remaining": [str(d) for d in remaining],
            "lock": lock,
            "writing": writing is not None,
        }
        print(json.dumps(report, indent=2))
        return 0 if not remaining else 1
    if lock:
        print(f"note: {lock}")
    if args.repair and damage:
        print("\n".join(_report(args.store, damage, False)[:-1]))
        print(
            "repaired: every problem fixed and verified"
            if not remaining
            else "\n".join(["after repair:"] + _report(args.store, remaining, True))
        )
    else:
        print("\n".join(_report(args.store, damage, False, writing)))
    return 0 if not remaining else 1
