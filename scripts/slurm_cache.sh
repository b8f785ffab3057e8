#!/usr/bin/env bash
# Cache activations across the nodes of a Slurm job: one torchrun per node, one process
# per GPU; every process owns whole shards of one store (shared filesystem or s3://).
# --resume is always passed, so a requeued or restarted job carries on where it stopped
# (and a first run simply starts).
#
#   sbatch --nodes 4 --gpus-per-node 8 scripts/slurm_cache.sh s3://bucket/pile.zarr \
#       --model gpt2-xl --dataset NeelNanda/pile-10k --sites resid_post:all --n-tokens 100000000
#
# Environment: NPROC_PER_NODE (default: the GPUs Slurm gave the node, else 1),
# MASTER_PORT (default 29500), PYTHON (default: python, e.g. .venv/bin/python).
# On CPU-only nodes pass --device cpu (torch.distributed then uses gloo).
#SBATCH --job-name=actstore-cache
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
set -euo pipefail
OUT="${1:?usage: slurm_cache.sh OUT [actstore cache flags...]}"
shift
HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
NPROC="${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-0}"
srun --ntasks-per-node=1 "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes "${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}" --nproc-per-node "$NPROC" \
    --rdzv-backend c10d --rdzv-endpoint "$HEAD_NODE:${MASTER_PORT:-29500}" --rdzv-id "${SLURM_JOB_ID:-actstore}" \
    -m actstore cache "$OUT" --resume "$@"
