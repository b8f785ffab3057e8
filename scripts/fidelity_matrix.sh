#!/usr/bin/env bash
# The fidelity tests (every patching family against its reference, the engine's self-check,
# caching against run_with_cache, actstore selftest) against other releases than the lock
# (constraints.txt), each in a virtualenv of its own, so that a new release is tested before
# users meet it. CI runs both after the main suite.
#
#   bash scripts/fidelity_matrix.sh newest   # the newest releases pyproject.toml's bounds allow (.venv-newest)
#   bash scripts/fidelity_matrix.sh tl3      # the lock with TransformerLens 3.9 and SAELens (.venv-tl3)
#   bash scripts/fidelity_matrix.sh drift    # the releases past the upper bounds (.venv-drift): a report
#
# Extra arguments go to pytest. A failure here with `newest` means a release inside the bounds
# breaks actstore: lower the bound in pyproject.toml (or fix actstore) before users meet it.
# `drift` installs the newest releases ignoring the upper bounds (scripts/past_bounds.py names them)
# and says which bounds can be raised; it exits 0 whatever the tests say (CI runs it as a report;
# ACTSTORE_DRIFT_STRICT=1 makes a failure fail), and does nothing when no release is past a bound.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:?usage: bash scripts/fidelity_matrix.sh newest|tl3|drift [pytest args]}"
shift
case "$which" in
    newest)
        export ACTSTORE_VENV=.venv-newest ACTSTORE_CONSTRAINTS=none ;;
    drift)
        PY=$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
        past=$("$PY" scripts/past_bounds.py) || { echo "drift: the package index could not be asked; skipped"; exit 0; }
        if [ -z "$past" ]; then
            echo "drift: no release is past pyproject.toml's upper bounds (the newest lane tests the newest)"; exit 0
        fi
        echo "drift: releases past the bounds: $past"
        export ACTSTORE_VENV=.venv-drift ACTSTORE_CONSTRAINTS=none ;;
    tl3)
        export ACTSTORE_VENV=.venv-tl3 ACTSTORE_CONSTRAINTS=.venv-tl3/constraints.txt
        mkdir -p .venv-tl3
        grep -v '^transformer-lens==' constraints.txt > "$ACTSTORE_CONSTRAINTS"
        # SAELens needs TransformerLens < 4; this lane also runs the SAELens integration (tests/integrations)
        # with the SAELens release it was tested with, and that release's own dependencies outside the lock
        printf '%s\n' transformer-lens==3.9.0 sae-lens==6.54.12 babe==0.0.7 nltk==3.10.4 plotly-express==0.4.1 \
            simple-parsing==0.1.9 tenacity==9.2.1 >> "$ACTSTORE_CONSTRAINTS" ;;
    *)
        echo "usage: bash scripts/fidelity_matrix.sh newest|tl3|drift [pytest args]" >&2; exit 2 ;;
esac
source scripts/setup_env.sh
if [ "$which" = tl3 ]; then
    python -m pip install -q --disable-pip-version-check -c "$ACTSTORE_CONSTRAINTS" sae-lens
fi
if [ "$which" = drift ]; then  # past actstore's own bounds: pip warns that actstore's requirement is not met
    # shellcheck disable=SC2086
    python -m pip install -q --disable-pip-version-check --upgrade $past 2>&1 | grep -v "which is incompatible" || true
fi
python - <<'PY'
from importlib.util import find_spec
from actstore.compat import describe
saelens = ("sae-lens",) if find_spec("sae_lens") else ()
print("fidelity tests with", describe(("transformers", "transformer-lens", *saelens, "torch", "zarr", "numcodecs",
                                       "datasets")))
PY
TESTS=(tests/patching tests/circuits tests/cli/test_cli_patch.py tests/test_selftest.py tests/capture/test_cache.py
       tests/integrations tests/families tests/capture/test_hf_engine.py)
if [ "$which" != drift ]; then
    exec python -m pytest -q -n "${ACTSTORE_TEST_WORKERS:-auto}" "$@" "${TESTS[@]}"
fi
status=0
python -m pytest -q -n "${ACTSTORE_TEST_WORKERS:-auto}" "$@" "${TESTS[@]}" || status=$?
for release in $past; do
    if [ "$status" = 0 ]; then
        echo "drift: ${release%%==*} ${release##*==} passes the fidelity tests: raise its bound in pyproject.toml (and the lock)"
    else
        echo "drift: the fidelity tests fail with $release (exit $status): keep its bound, or fix actstore first"
    fi
done
[ "${ACTSTORE_DRIFT_STRICT:-0}" = 1 ] && exit "$status"
exit 0
