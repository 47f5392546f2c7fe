"""On-policy distillation keeps SFT's token normalisation across ranks: the sampled reverse-KL objective is summed
over the step's completion tokens and divided by their number across all ranks, so 2 gloo ranks (DDP, and FSDP2 with
student and teacher sharded) give the one-process gradient and reverse KL for the same rollouts. The rollouts are
the one-process run's, split between the ranks' rollout files as the ranks take the prompts (rank r: prompts r,
r + 2, ...), so the 2-rank runs replay them (the resume path) instead of sampling."""

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
import on_policy_step_grads  # noqa: E402 - importable only after the sys.path.insert above
from test_loss_normalisation import assert_same_grads  # noqa: E402

import launch  # noqa: E402

SCRIPT = REPO / "tests" / "scripts" / "on_policy_step_grads.py"
N = 2  # completions per prompt (the script's rollout.n)


def run_step(tmp_path: Path, name: str, common: list[str], **kw) -> tuple[dict, dict]:
    out = tmp_path / f"{name}.pt"
    args = [*common, "--run_dir", str(tmp_path / name), "--out", str(out)]
    for k, v in kw.items():
        args += [f"--{k}", str(v)]
    if kw.get("devices", 1) == 1:
        on_policy_step_grads.main(args)
    else:
        env = launch.script_env(launch.free_port(), PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests' / 'scripts'}")
        proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out), json.loads(Path(str(out) + ".json").read_text())


def split_rollouts(one_rank_file: Path, run_dir: Path, world: int) -> list[int]:
    """Write the one-process step's rollouts as ``world`` ranks' files; returns each rank's completion tokens."""
    row = json.loads(one_rank_file.read_text().splitlines()[0])
    (run_dir / "rollouts").mkdir(parents=True)
    tokens = []
    for rank in range(world):
        mine = [r for i, r in enumerate(row["rollouts"]) if (i // N) % world == rank]
        (run_dir / "rollouts" / f"rank{rank}.jsonl").write_text(
            json.dumps({"step": 0, "rank": rank, "rollouts": mine}) + "\n")
        tokens.append(sum(len(r["completion_tokens"]) for r in mine))
    return tokens


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_two_ranks_give_the_one_process_gradient_for_the_same_rollouts(tmp_path, shared_dir):
    from skill_distill.assets import tiny_qwen3_dir

    corpus = launch.write_short_corpus(shared_dir, tmp_path / "corpus.jsonl")
    common = ["--corpus", str(corpus), "--student", str(launch.tiny_model_dir()), "--teacher", str(tiny_qwen3_dir())]
    base, base_metrics = run_step(tmp_path, "one", common)
    sampled = json.loads((tmp_path / "one" / "rollouts" / "rank0.jsonl").read_text())["rollouts"]
    assert len(sampled) == 4 * N and sum(len(r["completion_tokens"]) for r in sampled) > 4 * N
    for name, strategy in (("ddp2", "ddp"), ("fsdp2", "fsdp2")):
        tokens = split_rollouts(tmp_path / "one" / "rollouts" / "rank0.jsonl", tmp_path / name, 2)
        assert all(tokens)  # (the shares usually differ: a per-rank mean would then weigh the ranks' tokens unequally)
        grads, metrics = run_step(tmp_path, name, common, devices=2, strategy=strategy)
        assert_same_grads(base, grads)
        assert metrics["train/reverse_kl"] == pytest.approx(base_metrics["train/reverse_kl"], rel=1e-5), name
        # the replayed files are the ranks' rollouts, untouched
        assert len((tmp_path / name / "rollouts" / "rank0.jsonl").read_text().splitlines()) == 1
    assert base_metrics["train/reverse_kl"] != 0
