#!/bin/bash
# The whole method on a SLURM cluster: every stage a job, chained with afterok dependencies.
#
#   pool ──> attribute (ATTR_SHARDS array tasks) ──> merge-attribution ──> profile (PROFILE_SHARDS tasks)
#        │                                        │                       ──> merge-profile ──> train skill_sft ──> evaluate
#        │                                        └──> train random_sft (baseline) ──────────────────────────────> evaluate
#        └──> evaluate the untrained student (the baseline report the trained runs are compared with)
#
#   scripts/slurm/pipeline.sh              # submit (prints the job ids)
#   scripts/slurm/pipeline.sh --dry-run    # print the sbatch commands only
#   SIZE=4b TRAIN_NODES=2 ATTR_SHARDS=16 scripts/slurm/pipeline.sh
#
# Your own project instead (docs/OWN_DATA.md): the chain of `python -m skill_distill run`, one job per stage, each
# `run --config PROJECT --until STAGE` (the stages before it are skipped as unchanged). Everything but the jobs'
# resources comes from the project config; it is parsed (`run --plan true`) before anything is submitted:
#   scripts/slurm/pipeline.sh --config configs/examples/own_data.yaml [--dry-run] [run overrides, e.g. --run_dir x]
#   GPUS_FIT=8 TIME_PROFILE=48:00:00 scripts/slurm/pipeline.sh --config my_project.yaml
#
# Every job is requeue-safe: stages resume their outputs, training resumes from its newest complete checkpoint.
# A failed job cancels nothing by itself; its dependents stay pending (DependencyNeverSatisfied): fix, then
# resubmit the failed stage and `scontrol update job=<id> dependency=afterok:<new id>` the next one (or rerun this
# script: finished stages redo nothing). Partition/account: export SBATCH_PARTITION / SBATCH_ACCOUNT.
set -euo pipefail
cd "$(dirname "$0")/../.."

DRY=0
PROJECT=
overrides=()
while (( $# )); do
  case "$1" in
    --dry-run) DRY=1 ;;
    --config) PROJECT=${2:?--config needs a project config file}; shift ;;
    *) [[ -n "$PROJECT" ]] || { echo "unknown argument $1 (--dry-run, or --config PROJECT [overrides])" >&2; exit 2; }
       overrides+=("$1") ;;
  esac
  shift
done
PYTHON=${PYTHON:-.venv/bin/python}

n=0
submit() {  # submit NAME DEPENDENCY SBATCH_ARGS... -> prints the job id
  local name=$1 dep=$2
  shift 2
  local args=(--parsable --job-name "sd-$name")
  [[ -n "$dep" ]] && args+=(--dependency "afterok:$dep" --kill-on-invalid-dep=no)
  if (( DRY )); then
    n=$((n + 1))
    echo "sbatch ${args[*]} $*" >&2
    echo "<$name>"
  else
    sbatch "${args[@]}" "$@"
  fi
}
STAGE=scripts/slurm/stage.sbatch

if [[ -n "$PROJECT" ]]; then
  [[ -f "$PROJECT" ]] || { echo "project config $PROJECT does not exist" >&2; exit 2; }
  # parsed section by section and keyed as the jobs will: a bad key stops here, before any job is queued
  "$PYTHON" -m skill_distill run --config "$PROJECT" "${overrides[@]}" --plan true >&2 || exit 2
  mkdir -p logs
  prev=""
  ids=()
  for stage in $("$PYTHON" -c 'from skill_distill.project import STAGE_NAMES; print(*STAGE_NAMES)'); do
    var=${stage//-/_}
    case $stage in  # a job's resources: GPUS_<STAGE>, CPUS_<STAGE>, TIME_<STAGE> (select-report: _select_report)
      pool|select-report) gpus=0 ;;
      *) gpus=1 ;;  # fit: GPUS_FIT=8 for a training config on 8 GPUs

    esac
    gpus_var=GPUS_${var^^}; cpus_var=CPUS_${var^^}; time_var=TIME_${var^^}
    res=(--cpus-per-task "${!cpus_var:-16}" --time "${!time_var:-24:00:00}")
    (( ${!gpus_var:-$gpus} )) && res+=(--gpus-per-node "${!gpus_var:-$gpus}")
    prev=$(submit "$stage" "$prev" "${res[@]}" $STAGE run --config "$PROJECT" "${overrides[@]}" --until "$stage")
    ids+=("$stage=$prev")
  done
  echo "submitted: ${ids[*]}"
  exit 0
fi

SIZE=${SIZE:-8b}                   # the student: 4b | 8b
TRAIN_NODES=${TRAIN_NODES:-1}      # 1: the paper's effective batch 8; 2: batch 16 (see configs/runs/*_2node.yaml)
ATTR_SHARDS=${ATTR_SHARDS:-8}      # attribution: one Qwen2.5-32B engine (TP 4) per task
PROFILE_SHARDS=${PROFILE_SHARDS:-16}  # profiling: one student engine per GPU
DATA=${DATA:-data/omr}
TREE=${TREE:-asset:tree/skill_mix}
POOL_CONFIG=${POOL_CONFIG:-configs/pipeline/pool_omr.yaml}
ATTRIBUTE_CONFIG=${ATTRIBUTE_CONFIG:-configs/pipeline/attribute_omr_skill_mix.yaml}
PROFILE_CONFIG=${PROFILE_CONFIG:-configs/pipeline/profile_qwen3_${SIZE}_omr.yaml}
PROFILE_DIR=${PROFILE_DIR:-$DATA/profile_qwen3_$SIZE}
EVAL_CONFIG=${EVAL_CONFIG:-configs/pipeline/evaluate_qwen3_${SIZE}_paper.yaml}
SUFFIX=$([[ "$TRAIN_NODES" == 2 ]] && echo _2node || true)
# train.sbatch MODEL RUN composes configs/base/sft.yaml, configs/models/MODEL.yaml and configs/runs/RUN.yaml and
# trains in runs/MODEL/RUN (scripts/slurm/compose.sh)
MODEL=qwen3_$SIZE
SKILL_NAME=skill_sft$SUFFIX
RANDOM_NAME=random_sft$SUFFIX
SKILL_RUN=runs/$MODEL/$SKILL_NAME
RANDOM_RUN=runs/$MODEL/$RANDOM_NAME
BASE_EVAL=runs/eval/qwen3_${SIZE}_base

missing=()
for f in "$POOL_CONFIG" "$ATTRIBUTE_CONFIG" "$PROFILE_CONFIG" "$EVAL_CONFIG" "configs/models/$MODEL.yaml" \
         "configs/runs/$SKILL_NAME.yaml" "configs/runs/$RANDOM_NAME.yaml"; do
  [[ -f "$f" ]] || missing+=("$f")
done
if (( ${#missing[@]} )); then
  echo "missing config(s): ${missing[*]} (copy the qwen3_4b ones and change the model: configs/pipeline/*qwen3_4b*, configs/models/qwen3_4b.yaml)" >&2
  (( DRY )) || exit 2
fi
mkdir -p logs

TRAIN=scripts/slurm/train.sbatch
pool=$(submit pool "" --cpus-per-task 16 --mem 128G --time 4:00:00 \
  $STAGE pool --config "$POOL_CONFIG")
attr=$(submit attribute "$pool" --array "0-$((ATTR_SHARDS - 1))" --gpus-per-node 4 --cpus-per-task 32 --time 24:00:00 \
  $STAGE attribute --config "$ATTRIBUTE_CONFIG")
merge_attr=$(submit merge-attribution "$attr" --cpus-per-task 4 --mem 64G --time 1:00:00 \
  $STAGE merge-attribution --output_dir "$DATA" --num_shards "$ATTR_SHARDS" --pool "$DATA/pool.jsonl" --tree "$TREE")
profile=$(submit profile "$merge_attr" --array "0-$((PROFILE_SHARDS - 1))" --gpus-per-node 1 --cpus-per-task 16 --time 24:00:00 \
  $STAGE profile --config "$PROFILE_CONFIG")
merge_prof=$(submit merge-profile "$profile" --cpus-per-task 4 --mem 64G --time 1:00:00 \
  $STAGE merge-profile --output_dir "$PROFILE_DIR" --num_shards "$PROFILE_SHARDS")
base_eval=$(submit eval-base "$pool" --gpus-per-node 1 --cpus-per-task 16 --time 24:00:00 \
  $STAGE evaluate --config "$EVAL_CONFIG" --output_dir "$BASE_EVAL")
train_skill=$(submit train-skill "$merge_prof" --nodes "$TRAIN_NODES" $TRAIN "$MODEL" "$SKILL_NAME")
train_random=$(submit train-random "$merge_attr" --nodes "$TRAIN_NODES" $TRAIN "$MODEL" "$RANDOM_NAME")
for run in skill random; do
  if [[ $run == skill ]]; then dir=$SKILL_RUN; dep=$train_skill; else dir=$RANDOM_RUN; dep=$train_random; fi
  submit "eval-$run" "$dep:$base_eval" --gpus-per-node 1 --cpus-per-task 16 --time 24:00:00 \
    $STAGE evaluate --config "$EVAL_CONFIG" --model "$dir/hf_export/final" --output_dir "$dir/eval/final" \
    --baseline_report "$BASE_EVAL/report.json" --selection_manifest "$dir/selection_manifest.json" >/dev/null
done
echo "submitted: pool=$pool attribute=$attr merge-attribution=$merge_attr profile=$profile merge-profile=$merge_prof" \
     "eval-base=$base_eval train-skill=$train_skill train-random=$train_random (+ 2 evaluations)"
