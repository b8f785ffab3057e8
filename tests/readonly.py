"""A read-only copy of a store, for the tests of jobs that refuse to write there.

chmod alone does not stop root, who writes anyway; run as root, the block also runs
with the effective user and group ``nobody`` (restored after), so the operating
system refuses the writes as it would for any user."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534


@contextmanager
def read_only_copy(store: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a read-only copy of ``store`` (in a fresh folder, itself read-only), readable by anyone."""
    top = Path(tempfile.mkdtemp(prefix="actstore-ro-"))
    copy = top / Path(store).name
    shutil.copytree(store, copy)
    paths = [top, *sorted(top.rglob("*"))]
    ro = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
    for p in paths:
        p.chmod(ro | (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH if p.is_dir() else 0))
    as_root = os.geteuid() == 0
    try:
        if as_root:
            os.setegid(NOBODY)
            os.seteuid(NOBODY)
        yield copy
    finally:
        if as_root:
            os.seteuid(0)
            os.setegid(0)
        for p in paths:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(top)
