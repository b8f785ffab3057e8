#!/usr/bin/env bash
# The main job on the embedded default, offline, then a short tour; a few minutes on 2 cores.
# Sets up .venv (scripts/setup_env.sh), then runs `actstore tour`, which prints each
# `actstore` command before running it:
#   1. cache 200 rows of 128 tokens of the bundled demo corpus through actstore-demo
#      (resid_post of every layer) into demo_out/demo.zarr, and describe the store;
#   2. a logistic probe per layer for the token's position   -> demo_out/probe_position.png
#   3. repeated random tokens, induction scores of every head -> demo_out/induction_heads.png
#   4. held-out IOI prompt pairs, activation patching of the residual stream and of every
#      head's output -> demo_out/ioi_patch_resid_pre.png, demo_out/ioi_patch_attn_head_out_all_pos.png
# actstore-demo is a small GPT-2-architecture DEMO model trained on a synthetic corpus and
# shipped with the package (actstore/data/demo-model/): it is NOT GPT-2.
#
# Run twice, the second run replaces the first's output (the tour marks its folder with
# demo_out/.actstore-tour); a demo_out/ holding files of the tour's names that no tour made
# is refused before anything runs (pass OUT=another folder).
#
#   bash scripts/demo.sh                 # writes demo_out/
#   OUT=/tmp/tour bash scripts/demo.sh   # elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
actstore tour "${OUT:-demo_out}"
