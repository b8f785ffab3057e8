#!/usr/bin/env bash
# The checks that need a GPU, in one report file; under 10 minutes on one GPU (each step has a
# time limit, so a hung step cannot take the rest with it). Run it whenever a GPU is at hand and
# put its figures in the README ("On a GPU").
#
#   bash scripts/gpu_check.sh                      # sets up .venv, writes gpu_check_report.txt
#   bash scripts/gpu_check.sh /tmp/report.txt      # elsewhere
#   ACTSTORE_NO_SETUP=1 bash scripts/gpu_check.sh  # use the python on PATH (actstore installed there)
#   ACTSTORE_DEVICE=cuda:1 bash scripts/gpu_check.sh
#
# 1. actstore selftest --device cuda: caching, patching, direct path and attribution against their
#    references, in float32 and float16 (compute and storage);
# 2. bench_cache at the GPT-2-small and GPT-2-XL shapes in float16: actstore's tokens/s as a fraction
#    of the bare forward's (the same truncated forward without capture), and the writer's MB/s;
# 3. bench_patching on the GPU in float16: actstore against transformer_lens.patching (resid_pre,
#    every head by position; prompts differing late and early), and the self-check's cost;
# 5. bench_simulate: the pipeline fed by a simulated producer at GPT-2-small and -XL widths
#    (12 and 48 sites, float16) against the raw write on this machine's cores and disk.
set -uo pipefail
cd "$(dirname "$0")/.."
REPORT="${1:-gpu_check_report.txt}"
DEVICE="${ACTSTORE_DEVICE:-cuda}"
if [ "${ACTSTORE_NO_SETUP:-0}" != 1 ]; then
    source scripts/setup_env.sh
fi
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1  # progress bars (the reference sweeps draw one each) would swamp the report
step() {  # step LIMIT_S TITLE COMMAND...: run with a time limit, record its exit status and duration
    local limit=$1 title=$2
    shift 2
    echo
    echo "## $title"
    echo "\$ $*"
    local t0=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    echo "-> exit $rc after $((SECONDS - t0)) s (limit ${limit} s)"
    [ $rc -eq 0 ] || FAILED="$FAILED; $title (exit $rc)"
}
FAILED=""
exec > >(tee "$REPORT") 2>&1
echo "# actstore gpu_check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi") | sed 's/^/gpu: /'
python -c "from actstore.compat import describe; print('versions:', describe())"
step 60 "1. actstore selftest --device $DEVICE" python -m actstore selftest --device "$DEVICE"
RANDOM_ROWS=(--dataset repeated-random:64 --seq-len 129)  # unlimited rows of 129 tokens
step 60 "2. caching, GPT-2-small shape, float16" python benchmarks/bench_cache.py --scenario compute \
    "${RANDOM_ROWS[@]}" --device "$DEVICE" --dtype float16 --n-rows 512 --batch-size 64 --repeat 1 --skip-naive
step 210 "3. caching, GPT-2-XL shape, float16" python benchmarks/bench_cache.py --scenario gpt2-xl \
    "${RANDOM_ROWS[@]}" --device "$DEVICE" --dtype float16 --n-rows 256 --batch-size 32 --repeat 1 --skip-naive
step 120 "4. patching on $DEVICE, float16" python benchmarks/bench_patching.py --device "$DEVICE" \
    --dtype float16 --batch 8 --sweeps resid_pre,attn_head_out_by_pos --scenarios s2,early
step 120 "5. the pipeline with a simulated producer (no model; the machine's cores and disk)" bash -c \
    "python benchmarks/bench_simulate.py --width small --rows 512 --rounds 2 && python benchmarks/bench_simulate.py --width xl --rows 128 --rounds 2"
echo
if [ -n "$FAILED" ]; then echo "FAILED: ${FAILED#; }"; else echo "all steps finished"; fi
echo "report: $REPORT"
[ -z "$FAILED" ]
