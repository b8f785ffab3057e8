#!/usr/bin/env bash
# Set up and run the test suite (CPU, offline; about 15 minutes on 2 cores, one pytest-xdist worker per core).
#
#   bash scripts/test.sh            # extra arguments go to pytest, e.g. -k resume
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
# one worker per core (pytest-xdist); tests/conftest.py gives each worker one torch thread
python -m pytest -q -n "${ACTSTORE_TEST_WORKERS:-auto}" "$@" tests
