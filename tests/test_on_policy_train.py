"""On-policy distillation through ``python train.py fit`` (configs/distill/on_policy_cpu.yaml, shortened: a tiny
Qwen3 student and teacher on the real Qwen3 tokenizer, the hf rollout backend, skill-weighted prompts from the
quickstart selection): a run stopped mid-epoch by SIGTERM (exit 143 with a checkpoint) and one killed by SIGKILL in
the middle of a step, each resumed, equal the uninterrupted run: the same rollout tokens and log-probabilities per
step, the same losses, reverse KLs and learning rates."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
import launch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "distill" / "on_policy_cpu.yaml"
STEPS_PER_EPOCH, EPOCHS = 3, 2


def write_config(path: Path, extra_callbacks: list[dict]) -> Path:
    """The shipped CPU config with data paths made absolute, a checkpoint after every step, metrics written at once,
    and ``extra_callbacks`` (fault injection)."""
    cfg = yaml.safe_load(CONFIG.read_text())
    data = cfg["data"]["init_args"]
    for key in ("corpus", "tree", "attribution", "profile"):
        data[key] = str(REPO / data[key])
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ResumableCheckpoint"):
            cb["init_args"]["every_n_train_steps"] = 1
    cfg["trainer"]["logger"] = [{"class_path": "callbacks.run_loggers.RunCSVLogger",
                                 "init_args": {"flush_logs_every_n_steps": 1}}]
    cfg["trainer"]["callbacks"] += extra_callbacks
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_fit(tmp_path: Path, run_dir: Path, config: Path, student: Path, teacher: Path, log: str,
              resume: bool = False) -> tuple[subprocess.Popen, Path]:
    args = [sys.executable, str(REPO / "train.py"), "fit", "--config", str(config),
            f"--trainer.default_root_dir={run_dir}", f"--trainer.max_epochs={EPOCHS}",
            f"--model.model={student}", f"--model.distillation.teacher={teacher}", "--model.rollout.n=2",
            "--model.rollout.max_new_tokens=4", "--data.examples_per_step=2",
            f"--data.steps_per_epoch={STEPS_PER_EPOCH}", "--data.max_length=256",
            *(["--ckpt_path=last"] if resume else [])]
    env = launch.script_env(launch.free_port(), PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests' / 'scripts'}",
                            OMP_NUM_THREADS="1")
    out = tmp_path / log
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=out.open("w"), stderr=subprocess.STDOUT)
    return proc, out


def finish(started: tuple[subprocess.Popen, Path], expect: int) -> None:
    proc, log = started
    try:
        code = proc.wait(timeout=1800)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"timed out\n{launch.tail(log)}") from None
    assert code == expect, f"exit code {code} (expected {expect})\n{launch.tail(log)}"


def rollouts(run_dir: Path) -> dict[int, list[dict]]:
    rows = [json.loads(line) for line in (run_dir / "rollouts" / "rank0.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step's rollouts were written twice: {steps}"
    return {r["step"]: r["rollouts"] for r in rows}


def step_metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    """Per step, the latest value of each deterministic metric (a step redone after a kill logs again)."""
    out: dict[int, dict[str, float]] = {}
    with (run_dir / "logs" / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            for key in ("train/loss", "train/reverse_kl", "train/lr", "train/rollout_length", "train/grad_norm"):
                if row.get(key):
                    out.setdefault(int(row["step"]), {})[key] = float(row[key])
    return out


def assert_same_run(ref: Path, run: Path) -> None:
    steps = STEPS_PER_EPOCH * EPOCHS
    expected, got = rollouts(ref), rollouts(run)
    assert sorted(expected) == sorted(got) == list(range(steps))
    for step in range(steps):
        for a, b in zip(expected[step], got[step], strict=True):
            assert (a["prompt_id"], a["completion_tokens"]) == (b["prompt_id"], b["completion_tokens"]), step
            assert a["teacher_logprobs"] == pytest.approx(b["teacher_logprobs"], abs=1e-5)
            assert a["student_logprobs"] == pytest.approx(b["student_logprobs"], abs=1e-5)
    m_ref, m_run = step_metrics(ref), step_metrics(run)
    assert sorted(m_ref) == sorted(m_run) == list(range(steps))
    for step in range(steps):
        assert set(m_ref[step]) == set(m_run[step]) >= {"train/loss", "train/reverse_kl", "train/lr"}, step
        for key, value in m_ref[step].items():
            assert m_run[step][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # five train.py processes on a shared, loaded 2-core machine
def test_on_policy_fit_resumes_exactly_after_sigterm_and_sigkill(tmp_path):
    from skill_distill.assets import tiny_qwen3_dir

    student = launch.tiny_model_dir()
    teacher = tiny_qwen3_dir()  # hidden 128: another model on the same vocabulary
    plain = write_config(tmp_path / "plain.yaml", [])
    sigterm = write_config(tmp_path / "sigterm.yaml", [
        {"class_path": "faults.SignalAtStep", "init_args": {"step": 2, "signum": 15}}])  # mid epoch 0
    sigkill = write_config(tmp_path / "sigkill.yaml", [
        {"class_path": "on_policy_faults.KillBeforeBackward", "init_args": {"step": 4}}])  # mid epoch 1
    ref, stopped, killed = tmp_path / "ref", tmp_path / "stopped", tmp_path / "killed"
    first = [start_fit(tmp_path, ref, plain, student, teacher, "ref.log"),
             start_fit(tmp_path, stopped, sigterm, student, teacher, "stopped_a.log"),
             start_fit(tmp_path, killed, sigkill, student, teacher, "killed_a.log")]
    for started, code in zip(first, (0, 143, -9), strict=True):
        finish(started, code)
    assert (stopped / "checkpoints" / "last.ckpt").resolve().name == "step=0000002.ckpt"
    assert (killed / "checkpoints" / "last.ckpt").resolve().name == "step=0000004.ckpt"
    assert sorted(rollouts(killed)) == [0, 1, 2, 3, 4]  # step 4's rollouts were on disk before the kill
    # the resumes with the plain config (the fault callbacks are not fixed settings)
    second = [start_fit(tmp_path, stopped, plain, student, teacher, "stopped_b.log", resume=True),
              start_fit(tmp_path, killed, plain, student, teacher, "killed_b.log", resume=True)]
    for started in second:
        finish(started, 0)
    assert_same_run(ref, stopped)
    assert_same_run(ref, killed)
    metrics = step_metrics(ref)
    assert all(0 < m["train/lr"] for m in metrics.values())
    assert len({round(m["train/reverse_kl"], 6) for m in metrics.values()}) > 1  # real, changing values
    assert (ref / "run_finished.json").is_file() and (killed / "run_finished.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a train.py process with an HF-generate evaluation in a child, on a loaded 2-core machine
def test_on_policy_fit_reports_the_kl_on_the_students_own_samples_per_skill(tmp_path):
    """``train.py fit`` of the shipped on-policy config with a SkillEvalCallback on the held-out slice: the epoch-end
    report holds, beside per-skill accuracy, the per-skill KL(student || teacher) on the student's own samples
    (``sample_divergence``, each rank scoring its own samples) and the KL on teacher traces, and the metrics log
    ``eval/heldout/sample_kl``."""
    from skill_distill.assets import tiny_qwen3_dir

    student, teacher = launch.tiny_model_dir(), tiny_qwen3_dir()
    config = write_config(tmp_path / "eval.yaml", [{"class_path": "callbacks.SkillEvalCallback", "init_args": {
        "benchmarks": [{"name": "heldout", "limit_per_skill": 1, "k": 2}], "every_n_epochs": EPOCHS,
        "export_dtype": None, "sampling": {"temperature": 1.0, "max_new_tokens": 8},
        "backend": {"class_path": "HFConfig", "init_args": {"batch_size": 8}}, "grading": {"workers": 0}}}])
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["init_args"]["val_corpus"] = str(REPO / "data" / "quickstart" / "heldout.jsonl")
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    finish(start_fit(tmp_path, run, config, student, teacher, "fit.log"), 0)
    report = json.loads((run / "eval" / f"epoch={EPOCHS - 1}" / "report.json").read_text())
    metrics = report["benchmarks"]["heldout"]["metrics"]
    own = metrics["sample_divergence"]
    assert own["direction"] == "KL(student || teacher)" and own["kl"] > 0.01
    assert own["samples"] == metrics["samples"] == 2 * metrics["problems"] and own["tokens"] > own["samples"]
    assert report["summary"]["heldout"]["sample_kl"] == own["kl"]
    assert metrics["divergence"]["direction"] == "KL(teacher || student)" and metrics["divergence"]["kl"] > 0.01
    leaves = [r for r in metrics["skills"] if r["is_leaf"]]
    assert leaves and all(r["accuracy"] is not None and r["sample_kl"] > 0 and r["kl"] > 0 for r in leaves)
    by_chain = {r["chain"]: r["kl"] for r in own["skills"]}
    assert all(r["sample_kl"] == by_chain[r["chain"]] for r in leaves)
    with (run / "logs" / "metrics.csv").open() as f:
        logged = [float(r["eval/heldout/sample_kl"]) for r in csv.DictReader(f) if r.get("eval/heldout/sample_kl")]
    assert logged == [pytest.approx(own["kl"])]
