# Sourced by demo.sh and test.sh: create the virtualenv (.venv, or $ACTSTORE_VENV)
# if missing, install torch and actstore with its test extras, and put it on PATH.
# `pip install torch==2.13.0` takes a CPU build here and the CUDA build on a GPU machine.
VENV="${ACTSTORE_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
export PATH="$PWD/$VENV/bin:$PATH"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # nothing here needs the hub; set 0 to load gpt2 etc.
