"""What identifies a corpus's content, so that a resumed run reads the documents its
first run read: the sha256 of each local file (beside its path and size), and for a
hub dataset the commit its revision resolves to (``resolved_revision``; the hub is
asked once, when the store is made or resumed; offline it stays unknown).

A store made before these fingerprints existed has none: a resume of it checks paths
and sizes only, and says what it could not check (:func:`content_changes`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

__all__ = ["file_sha256", "hub_revision", "without_fingerprints", "content_changes"]

_BLOCK = 1 << 20


def file_sha256(path: str) -> str:
    """The sha256 of a file's bytes, as 'sha256:<hex>'."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def hub_revision(name: str, revision: str | None) -> str | None:
    """The commit that hub dataset ``name`` at ``revision`` (None: the default branch)
    resolves to, or None where the hub cannot be asked (offline, no such dataset)."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(name, revision=revision).sha
    except Exception:  # noqa: BLE001 - offline, unknown dataset, no huggingface_hub: unknown, said on resume
        return None


def without_fingerprints(corpus: Mapping[str, Any]) -> dict[str, Any]:
    """A corpus description with the content fingerprints left out (what a store made
    before them also records)."""
    out = {k: v for k, v in corpus.items() if k != "resolved_revision"}
    if out.get("files") is not None:
        out["files"] = [{k: v for k, v in f.items() if k != "sha256"} for f in out["files"]]
    return out


def content_changes(
    stored: Mapping[str, Any], current: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """(how the corpus content differs from the store's, what could not be checked),
    each a list of sentences. Paths, sizes and options are compared elsewhere."""
    changed: list[str] = []
    unchecked: list[str] = []
    now = {f["path"]: f.get("sha256") for f in current.get("files") or ()}
    for f in stored.get("files") or ():
        then = f.get("sha256")
        if then is None:
            unchecked.append(
                f"the content of corpus file '{f['path']}' (the store was made before actstore "
                "recorded corpus fingerprints; only its path and size were compared)"
            )
        elif f["path"] in now and now[f["path"]] != then:
            changed.append(
                f"corpus file '{f['path']}' changed since the store was made, at the same size "
                f"(content {then[:19]}... then, {str(now[f['path']])[:19]}... now)"
            )
    if stored.get("kind") == "hub":
        then, now_rev = stored.get("resolved_revision"), current.get("resolved_revision")
        name = stored.get("source")
        if then is None:
            unchecked.append(
                f"which commit of hub dataset '{name}' the store was made from (not recorded)"
            )
        elif now_rev is None:
            unchecked.append(
                f"that hub dataset '{name}' is still at commit {then} (the hub could not be asked)"
            )
        elif now_rev != then:
            changed.append(
                f"hub dataset '{name}' is now at commit {now_rev}; the store was made from commit {then}"
            )
    return changed, unchecked
