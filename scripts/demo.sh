#!/usr/bin/env bash
# The main job on the embedded default, offline: set up, cache the demo corpus
# through the demo model (a random-init GPT-2-architecture model until a trained
# one ships), then describe the store.
#
#   bash scripts/demo.sh            # writes demo_out/demo.zarr
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
OUT="${OUT:-demo_out/demo.zarr}"
mkdir -p "$(dirname "$OUT")"
actstore cache "$OUT" --model actstore-demo --dataset actstore-demo \
    --sites resid_post:all,z:2-3,pattern:3.0,3.1 --seq-len 128 --n-rows 200 --batch-size 16 --overwrite
actstore info "$OUT"
python - "$OUT" <<'PY'
import sys, actstore
store = actstore.ActivationStore.open(sys.argv[1])
x = store.acts("blocks.3.hook_resid_post", rows=slice(0, 2), as_="torch")
print("blocks.3.hook_resid_post rows 0-1:", tuple(x.shape), x.dtype)
print("row 0 starts:", "".join(store.str_tokens(0)[:16]).replace("\n", " "))
m = store.stats("blocks.3.hook_resid_post")
print(f"stats over {m.count} tokens: mean |mean| {abs(m.mean).mean():.4f}, mean var {m.var.mean():.4f}")
PY
