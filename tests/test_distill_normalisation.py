"""Logit distillation keeps SFT's normalisation: the objective is summed over the step's supervised tokens and
divided by their number across micro-batches and ranks, so 2 gloo ranks x 2 micro-batches give the one-process,
one-micro-batch gradient (and logged loss) for the same 8 examples, under DDP and under FSDP2 (student and teacher
sharded, the teacher loaded shard by shard); the chunk size changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "scripts"))
from test_loss_normalisation import assert_same_grads  # noqa: E402

import launch  # noqa: E402
import one_step_grads  # noqa: E402 - importable only after the sys.path.insert above

SCRIPT = REPO / "tests" / "scripts" / "one_step_grads.py"


def run_step(tmp_path, name, corpus, tokenizer, teacher, **kw) -> tuple[dict, dict]:
    out = tmp_path / f"{name}.pt"
    args = ["--objective", "kd", "--corpus", str(corpus), "--tokenizer", str(tokenizer), "--teacher", str(teacher),
            "--out", str(out)]
    for k, v in kw.items():
        args += [f"--{k}", str(v)]
    if kw.get("devices", 1) == 1:
        one_step_grads.main(args)
    else:
        env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests' / 'scripts'}",
                   MASTER_PORT=str(launch.free_port()))
        proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out), json.loads(Path(str(out) + ".json").read_text())


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(2400)  # four training steps, two of them 2-process; over 15 minutes on a loaded 2-core machine
def test_two_ranks_and_micro_batches_give_the_one_process_gradient(tmp_path, shared_dir, qwen_tokenizer_dir):
    from skill_distill.assets import tiny_qwen3_dir

    corpus = launch.write_short_corpus(shared_dir, tmp_path / "corpus.jsonl")
    teacher = tiny_qwen3_dir(tmp_path / "teacher", seed=1)
    base, base_metrics = run_step(tmp_path, "one", corpus, qwen_tokenizer_dir, teacher)
    ranks, rank_metrics = run_step(tmp_path, "ddp2", corpus, qwen_tokenizer_dir, teacher, devices=2, accumulate=2)
    chunks, chunk_metrics = run_step(tmp_path, "chunk7", corpus, qwen_tokenizer_dir, teacher, chunk_size=7)
    # FSDP2 (ModelParallelStrategy): the student sharded, the teacher built on meta, sharded and loaded shard by shard
    sharded, sharded_metrics = run_step(tmp_path, "fsdp2", corpus, qwen_tokenizer_dir, teacher, devices=2,
                                        accumulate=2, strategy="fsdp2")
    assert_same_grads(base, ranks)
    assert_same_grads(base, chunks)
    assert_same_grads(base, sharded)
    for other in (rank_metrics, chunk_metrics, sharded_metrics):
        assert other.keys() == base_metrics.keys()
        for key, value in base_metrics.items():
            assert other[key] == pytest.approx(value, rel=1e-5), key
    assert base_metrics["train/jsd"] > 0 and 5 < base_metrics["train/ce"] < 20
