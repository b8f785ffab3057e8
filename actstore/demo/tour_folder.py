"""The tour's folder: every name the tour writes there (OUTPUTS: stores, result groups and
files), the marker file that says a folder is a tour's (MARKER), and the check, before any
work, that the tour can write there without destroying what it did not make
(:func:`check_tour_folder`; the tour's steps: :mod:`actstore.demo.tour`).
"""

from __future__ import annotations

import os

from ..errors import ConfigError

__all__ = ["MARKER", "STORES", "GROUPS", "FILES", "OUTPUTS", "CIRCUIT_METHOD", "check_tour_folder"]

MARKER = ".actstore-tour"  # written first into the tour's folder: what is there was made by a tour
STORES = ("demo.zarr", "induction.zarr")  # actstore stores (`actstore cache`)
# Zarr groups of results (`actstore patch --out`, `actstore circuit --out`)
GROUPS = (
    "ioi.zarr",
    "ioi_circuit.zarr",
)
# the circuit step's method, which names its figures: one backward per pair, a second or two on a CPU
CIRCUIT_METHOD = "eap"
FILES = (
    "probe_position.png",
    "induction_heads.png",
    "ioi_pairs.jsonl",
    "ioi_patch_resid_pre.png",
    "ioi_patch_attn_head_out_all_pos.png",
    *(f"ioi_circuit.{CIRCUIT_METHOD}.circuit.{x}" for x in ("png", "dot", "json")),
    "ioi_circuit.faithfulness.png",
)
OUTPUTS = STORES + GROUPS + FILES  # every name the tour writes in its folder (besides MARKER)


def _fresh_name(out: str) -> str:
    """A folder name beside ``out`` that does not exist yet (``out``-tour, -tour2, ...)."""
    base = out.rstrip("/" + os.sep) or "demo_out"
    for i in range(1, 1000):
        name = f"{base}-tour{'' if i == 1 else i}"
        if not os.path.lexists(name):
            return name
    return "a new folder"


def _unreplaceable(path: str, name: str) -> str | None:
    """Why the tour's step cannot replace what is at ``path`` (None: nothing there, or it can)."""
    import zarr

    from ..store.format import is_store

    if not os.path.lexists(path):
        return None
    if name in FILES:
        return None if os.path.isfile(path) else f"{name} is a folder, where the tour writes a file"
    if not os.path.isdir(path):
        return f"{name} is a file, where the tour writes a Zarr store"
    if name in STORES:
        return None if is_store(path) else f"{name} is a folder but not an actstore store"
    try:
        zarr.open_group(path, mode="r")
    except Exception:
        return f"{name} is a folder but not a Zarr group"
    return None


def check_tour_folder(out: str, overwrite: bool = False) -> None:
    """Refuse, before any work, a folder the tour cannot write without destroying what it
    did not make. Accepted: a new or empty folder; a folder holding none of OUTPUTS; an
    earlier tour's folder (it holds MARKER); with ``overwrite``, a folder whose files of
    those names the tour may replace. Refused: a file; a folder holding any of OUTPUTS
    that no tour made (unless ``overwrite``); and, always, one of OUTPUTS of a kind the
    tour's step cannot replace (a folder where it writes a file, a folder that is not a
    store where it writes a store)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(
            f"Tour folder '{out}' is a file; pass a folder (new or from an earlier tour), e.g. "
            "`actstore tour demo_out`."
        )
    if not os.path.isdir(out):
        return
    taken = [n for n in OUTPUTS if os.path.lexists(os.path.join(out, n))]
    blocked = [why for n in taken if (why := _unreplaceable(os.path.join(out, n), n)) is not None]
    if blocked:
        raise ConfigError(
            f"Tour folder '{out}' holds what the tour cannot replace ({'; '.join(blocked)}); remove "
            f"{'them' if len(blocked) > 1 else 'it'}, or pass a new folder, e.g. "
            f"`actstore tour {_fresh_name(out)}`."
        )
    if taken and not overwrite and not os.path.isfile(os.path.join(out, MARKER)):
        raise ConfigError(
            f"Tour folder '{out}' already holds {', '.join(taken)}, which no earlier tour made there (it "
            f"has no {MARKER} file), and the tour would replace {'them' if len(taken) > 1 else 'it'}. "
            f"Pass a new folder, e.g. `actstore tour {_fresh_name(out)}`, or --overwrite (overwrite=True) "
            f"to let the tour replace {'them' if len(taken) > 1 else 'it'}."
        )
