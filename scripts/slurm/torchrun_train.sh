#!/bin/bash
# Multi-node training without SLURM: run this on every node (same MASTER_ADDR/MASTER_PORT, NODE_RANK 0..N-1).
#   MASTER_ADDR=node0 MASTER_PORT=29500 NNODES=2 NODE_RANK=0 scripts/slurm/torchrun_train.sh qwen3_8b skill_sft_2node
#   MASTER_ADDR=node0 MASTER_PORT=29500 NNODES=2 NODE_RANK=1 scripts/slurm/torchrun_train.sh qwen3_8b skill_sft_2node
# (configs/base/sft.yaml + configs/models/MODEL.yaml + configs/runs/RUN.yaml in runs/MODEL/RUN: scripts/slurm/compose.sh)
# torchrun starts one process per GPU; Lightning reads its environment (TorchElasticEnvironment). The run directory
# (checkpoints) must be on a filesystem every node sees: each rank writes its own shard of every checkpoint.
# On SIGTERM torchrun forwards the signal to its workers, which save together and exit (callbacks.preemption);
# rerunning the same command continues from the newest complete checkpoint.
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
usage="usage: MASTER_ADDR=... NNODES=N NODE_RANK=i scripts/slurm/torchrun_train.sh MODEL RUN [extra train.py args]"
model=${1:?$usage}
run=${2:?$usage}
shift 2
source scripts/slurm/compose.sh
compose_run "$model" "$run"
export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-8} TORCH_NCCL_ASYNC_ERROR_HANDLING=1
exec "$PYTHON" -m torch.distributed.run \
  --nnodes "${NNODES:-1}" --nproc-per-node "${GPUS_PER_NODE:-8}" --node-rank "${NODE_RANK:-0}" \
  --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
  train.py fit "${train_args[@]}" --ckpt_path last "$@"
