#!/usr/bin/env bash
# Set up and run the test suite (CPU, offline; a few minutes on 2 cores).
#
#   bash scripts/test.sh            # extra arguments go to pytest, e.g. -k resume
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python -m pytest -q "$@" tests
