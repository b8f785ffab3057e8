# Sourced by demo.sh and test.sh: create the virtualenv (.venv, or $ACTSTORE_VENV)
# if missing, install torch and actstore with its test extras at the exact releases of
# constraints.txt (the tested set, whatever day it is), and put it on PATH.
# `pip install torch==2.13.0` takes a CPU build here and the CUDA build on a GPU machine.
# ACTSTORE_CONSTRAINTS=none installs the newest releases pyproject.toml's bounds allow
# (scripts/fidelity_matrix.sh does, in a virtualenv of its own).
VENV="${ACTSTORE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
CONSTRAINTS="${ACTSTORE_CONSTRAINTS:-constraints.txt}"
if [ "$CONSTRAINTS" = none ]; then
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade -e ".[test]"
else
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$CONSTRAINTS" -e ".[test]"
fi
export PATH="$PWD/$VENV/bin:$PATH"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # nothing here needs the hub; set 0 to load gpt2 etc.
