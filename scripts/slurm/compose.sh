#!/bin/bash
# Sourced by train.sbatch and torchrun_train.sh: the train.py arguments of a production run, the same composition
# every run file states at its top (the shared base, the model file, the run file, the run's own directory):
#   compose_run MODEL RUN   ->   train_args=(--config configs/base/sft.yaml --config configs/models/MODEL.yaml
#                                            --config configs/runs/RUN.yaml --trainer.default_root_dir runs/MODEL/RUN)
#                                run_files=(the three files)
compose_run() {
  local model=${1:?compose_run MODEL RUN: MODEL is a file name of configs/models/ (e.g. qwen3_8b)}
  local run=${2:?compose_run MODEL RUN: RUN is a file name of configs/runs/ (e.g. skill_sft)}
  run_files=(configs/base/sft.yaml "configs/models/$model.yaml" "configs/runs/$run.yaml")
  local f
  for f in "${run_files[@]}"; do
    if [[ ! -f "$f" ]]; then
      echo "error: $f does not exist (models: $(ls configs/models | sed 's/\.yaml//' | tr '\n' ' ')runs:" \
           "$(ls configs/runs | sed 's/\.yaml//' | tr '\n' ' '| sed 's/ $//'))" >&2
      return 2
    fi
  done
  train_args=(--config "${run_files[0]}" --config "${run_files[1]}" --config "${run_files[2]}"
              --trainer.default_root_dir "runs/$model/$run")
}
