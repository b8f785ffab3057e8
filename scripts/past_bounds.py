"""The releases past pyproject.toml's upper bounds: for each dependency bounded above (`<X`),
the newest release on the package index, printed as `name==version` when the bound excludes
it. `scripts/fidelity_matrix.sh drift` installs these and runs the fidelity tests on them.

    python scripts/past_bounds.py            # e.g. transformers==5.25.0
    python scripts/past_bounds.py --explain  # one line per bounded package, past or not
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.version import Version


def newest(name: str) -> Version | None:
    """The newest release of ``name`` on the index pip uses (None if it cannot be asked)."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", name, "--disable-pip-version-check"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return None
    m = re.match(r"\S+ \(([^)]+)\)", out.stdout)
    return Version(m.group(1)) if m else None


def main() -> int:
    explain = "--explain" in sys.argv[1:]
    deps = tomllib.loads(Path(__file__).resolve().parents[1].joinpath("pyproject.toml").read_text())
    for line in deps["project"]["dependencies"]:
        req = Requirement(line)
        if not any(s.operator in ("<", "<=") for s in req.specifier):
            continue
        new = newest(req.name)
        if new is None:
            print(f"# {req.name}: the index did not answer", file=sys.stderr)
        elif new not in req.specifier:
            print(f"{req.name}=={new}" + (f"  # past {req.name}{req.specifier}" if explain else ""))
        elif explain:
            print(f"# {req.name}: newest {new} is within {req.specifier}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
