#!/usr/bin/env bash
# Lint, format and type checks (CI runs this after the tests): ruff check and ruff format --check
# over the code, mypy over actstore/. Their settings are in pyproject.toml ([tool.ruff], [tool.mypy]).
#
#   bash scripts/lint.sh          # check
#   ruff check --fix . && ruff format .   # fix what ruff can, then check again
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
ruff check actstore tests benchmarks scripts
ruff format --check actstore tests benchmarks scripts
mypy
