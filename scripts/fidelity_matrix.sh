#!/usr/bin/env bash
# The fidelity tests (every patching family against its reference, the engine's self-check,
# caching against run_with_cache, actstore selftest) against other releases than the lock
# (constraints.txt), each in a virtualenv of its own, so that a new release is tested before
# users meet it. CI runs both after the main suite.
#
#   bash scripts/fidelity_matrix.sh newest   # the newest releases pyproject.toml's bounds allow (.venv-newest)
#   bash scripts/fidelity_matrix.sh tl3      # the lock with TransformerLens 3.9 and SAELens (.venv-tl3)
#
# Extra arguments go to pytest. A failure here with `newest` means a release inside the bounds
# breaks actstore: lower the bound in pyproject.toml (or fix actstore) before users meet it.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:?usage: bash scripts/fidelity_matrix.sh newest|tl3 [pytest args]}"
shift
case "$which" in
    newest)
        export ACTSTORE_VENV=.venv-newest ACTSTORE_CONSTRAINTS=none ;;
    tl3)
        export ACTSTORE_VENV=.venv-tl3 ACTSTORE_CONSTRAINTS=.venv-tl3/constraints.txt
        mkdir -p .venv-tl3
        grep -v '^transformer-lens==' constraints.txt > "$ACTSTORE_CONSTRAINTS"
        # SAELens needs TransformerLens < 4; this lane also runs the SAELens integration (tests/integrations)
        # with the SAELens release it was tested with, and that release's own dependencies outside the lock
        printf '%s\n' transformer-lens==3.9.0 sae-lens==6.54.12 babe==0.0.7 nltk==3.10.4 plotly-express==0.4.1 \
            simple-parsing==0.1.9 tenacity==9.2.1 >> "$ACTSTORE_CONSTRAINTS" ;;
    *)
        echo "usage: bash scripts/fidelity_matrix.sh newest|tl3 [pytest args]" >&2; exit 2 ;;
esac
source scripts/setup_env.sh
if [ "$which" = tl3 ]; then
    python -m pip install -q --disable-pip-version-check -c "$ACTSTORE_CONSTRAINTS" sae-lens
fi
python - <<'PY'
from importlib.util import find_spec
from actstore.compat import describe
saelens = ("sae-lens",) if find_spec("sae_lens") else ()
print("fidelity tests with", describe(("transformers", "transformer-lens", *saelens, "torch", "zarr", "numcodecs",
                                       "datasets")))
PY
python -m pytest -q -n "${ACTSTORE_TEST_WORKERS:-auto}" "$@" tests/patching tests/circuits tests/cli/test_cli_patch.py tests/test_selftest.py tests/capture/test_cache.py \
    tests/integrations
