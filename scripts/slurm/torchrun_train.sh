#!/bin/bash
# Multi-node training without SLURM: run this on every node (same MASTER_ADDR/MASTER_PORT, NODE_RANK 0..N-1).
#   MASTER_ADDR=node0 MASTER_PORT=29500 NNODES=2 NODE_RANK=0 scripts/slurm/torchrun_train.sh configs/qwen3_8b/skill_sft_2node.yaml
#   MASTER_ADDR=node0 MASTER_PORT=29500 NNODES=2 NODE_RANK=1 scripts/slurm/torchrun_train.sh configs/qwen3_8b/skill_sft_2node.yaml
# torchrun starts one process per GPU; Lightning reads its environment (TorchElasticEnvironment). The run directory
# (checkpoints) must be on a filesystem every node sees: each rank writes its own shard of every checkpoint.
# On SIGTERM torchrun forwards the signal to its workers, which save together and exit (callbacks.preemption);
# rerunning the same command continues from the newest complete checkpoint.
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
config=${1:?usage: MASTER_ADDR=... NNODES=N NODE_RANK=i scripts/slurm/torchrun_train.sh CONFIG [extra train.py args]}
shift
# a run file of configs/qwen3_*/ holds only its differences: compose the base.yaml beside it first
configs=(--config "$config")
base="$(dirname "$config")/base.yaml"
if [[ -f "$base" && "$config" != "$base" ]]; then configs=(--config "$base" --config "$config"); fi
export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} TORCH_NCCL_ASYNC_ERROR_HANDLING=1
exec "$PYTHON" -m torch.distributed.run \
  --nnodes "${NNODES:-1}" --nproc-per-node "${GPUS_PER_NODE:-8}" --node-rank "${NODE_RANK:-0}" \
  --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
  train.py fit "${configs[@]}" --ckpt_path last "$@"
