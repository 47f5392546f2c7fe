"""Logit distillation through ``python train.py fit`` (configs/distill/logit_kd_cpu.yaml, shortened): it trains with
a teacher beside the student, is stopped by SIGTERM and resumes; the checkpoint holds the student and the teacher's
identity but no teacher weight; a resume with another teacher (another name, or the same name with another config)
is refused in one line with exit code 2; a teacher with another vocabulary is refused at start."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "scripts"))  # launch.train_in_process
CONFIG = REPO / "configs" / "distill" / "logit_kd_cpu.yaml"


def write_corpus(shared_dir: Path, path: Path, n: int = 8) -> Path:
    """8 real MATH-500 problems (the shortest of the first 200) with their reference solutions, cut short, as
    traces: none is dropped at max_length 128."""
    rows = [json.loads(line) for line in (shared_dir / "data/benchmarks/math500/test.jsonl").open()][:200]
    rows = sorted(rows, key=lambda r: (len(r["problem"]), r["problem"]))[:n]
    with path.open("w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"id": f"m{i}", "problem": r["problem"], "answer": r["answer"],
                                "trace": r["solution"][:200]}) + "\n")
    return path


def fit_command(tmp_path: Path, run_dir: Path, teacher: Path, corpus: Path, tokenizer: Path, *extra: str,
                log: str = "fit.log", sigterm_at_step: int | None = None) -> list[str]:
    """The arguments of ``train.py`` for a run of 2 steps an epoch of 4 examples, 2 epochs, a checkpoint after every
    step; SIGTERM after step ``sigterm_at_step``."""
    cfg = yaml.safe_load(CONFIG.read_text())
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ResumableCheckpoint"):
            cb["init_args"]["every_n_train_steps"] = 1
    if sigterm_at_step is not None:
        cfg["trainer"]["callbacks"].append({"class_path": "faults.SignalAtStep",
                                            "init_args": {"step": sigterm_at_step, "signum": 15}})
    config = tmp_path / f"{log}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return ["fit", "--config", str(config), f"--trainer.default_root_dir={run_dir}", "--trainer.max_epochs=2",
            f"--model.distillation.teacher={teacher}", f"--data.corpus={corpus}", f"--data.tokenizer={tokenizer}",
            "--data.tree=null", "--data.attribution=null", "--data.profile=null", "--data.selection.strategy=all",
            "--data.skill_format.mode=off", "--data.max_length=128", "--data.examples_per_step=4", *extra]


def fit(tmp_path: Path, run_dir: Path, teacher: Path, corpus: Path, tokenizer: Path, *extra: str,
        log: str = "fit.log", sigterm_at_step: int | None = None) -> tuple[int, str]:
    """``train.py fit`` (``fit_command``) in a child process (train.py's own error handling, exit codes and
    signals)."""
    args = [sys.executable, str(REPO / "train.py"), *fit_command(tmp_path, run_dir, teacher, corpus, tokenizer, *extra,
                                                                 log=log, sigterm_at_step=sigterm_at_step)]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests' / 'scripts'}")
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    (tmp_path / log).write_text(proc.stdout + proc.stderr)
    return proc.returncode, proc.stderr


def fit_in_process(monkeypatch, capfd, tmp_path: Path, run_dir: Path, teacher: Path, corpus: Path,
                       tokenizer: Path, *extra: str, log: str = "fit.log") -> tuple[int, str]:
    """``fit`` through train.py's entry point in this process (``launch.train_in_process``), for a run
    refused before its first step or a short single-process resume: a new process would spend most of its time
    importing torch and Lightning. (exit code, everything it wrote)."""
    from launch import train_in_process

    command = fit_command(tmp_path, run_dir, teacher, corpus, tokenizer, *extra, log=log)
    code, out = train_in_process(monkeypatch, capfd, tmp_path, Path(command[2]), *command[3:])
    (tmp_path / log).write_text(out)
    return code, out


def metrics(run_dir: Path) -> list[dict]:
    with (run_dir / "logs" / "metrics.csv").open() as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a train.py child process, three runs in this one; minutes on a loaded 2-core machine
def test_logit_kd_trains_resumes_and_keeps_its_teacher(tmp_path, shared_dir, qwen_tokenizer_dir, monkeypatch, capfd):
    from skill_distill.assets import tiny_qwen3_dir

    teacher = tiny_qwen3_dir(tmp_path / "teacher", seed=1)
    other = tiny_qwen3_dir(tmp_path / "other_teacher", seed=2, num_hidden_layers=1)
    corpus = write_corpus(shared_dir, tmp_path / "corpus.jsonl")
    run = tmp_path / "run"
    # SIGTERM after optimizer step 1 (of 4, mid-epoch): PreemptionCallback saves and exits 143
    code, err = fit(tmp_path, run, teacher, corpus, qwen_tokenizer_dir, log="a.log", sigterm_at_step=1)
    assert code == 143, err[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False, map_location="cpu")
    assert saved["global_step"] == 1
    assert saved["teacher_identity"]["name"] == str(teacher) and len(saved["teacher_identity"]["config_sha256"]) == 64
    keys = list(saved["state_dict"])
    assert keys and all(k.startswith("model.") for k in keys) and not any("teacher" in k for k in keys)
    # the hidden-64 student's weights only (the teacher's hidden size is 128)
    assert saved["state_dict"]["model.model.embed_tokens.weight"].shape == (151936, 64)
    assert saved["state_dict"]["model.model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)
    first = metrics(run)
    assert len(first) == 1 and all(0 < float(r["train/forward_kl"]) < 20 for r in first)
    assert all(float(r["train/ce"]) > 5 for r in first)  # random students over a 152k vocabulary

    # another teacher by name: the fixed setting model.distillation, reported by its key
    code, err = fit_in_process(monkeypatch, capfd, tmp_path, run, other, corpus, qwen_tokenizer_dir,
                                   "--ckpt_path=last", log="b.log")
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: model.distillation.teacher is"), err[-3000:]
    # the same name with another config: the checkpoint's teacher identity
    saved_config = (teacher / "config.json").read_text()
    shutil.copy(other / "config.json", teacher / "config.json")
    try:
        code, err = fit_in_process(monkeypatch, capfd, tmp_path, run, teacher, corpus, qwen_tokenizer_dir,
                                       "--ckpt_path=last", log="c.log")
    finally:
        (teacher / "config.json").write_text(saved_config)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: the teacher") and "is not the run's teacher" in last, err[-3000:]

    code, err = fit_in_process(monkeypatch, capfd, tmp_path, run, teacher, corpus, qwen_tokenizer_dir,
                               "--ckpt_path=last", log="d.log")
    assert code == 0, err[-3000:]
    rows = metrics(run)
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert (run / "run_finished.json").is_file()
    final = torch.load(ckpt, weights_only=False, map_location="cpu")
    assert final["global_step"] == 4 and final["teacher_identity"] == saved["teacher_identity"]
    assert not any("teacher" in k for k in final["state_dict"])


@pytest.mark.slow
def test_a_teacher_with_another_vocabulary_is_refused_in_one_line(tmp_path, shared_dir, qwen_tokenizer_dir, monkeypatch,
                                                                   capfd):
    from skill_distill.assets import tiny_qwen3_dir

    teacher = tiny_qwen3_dir(tmp_path / "small_vocab", vocab_size=151680)
    corpus = write_corpus(shared_dir, tmp_path / "corpus.jsonl")
    code, err = fit_in_process(monkeypatch, capfd, tmp_path, tmp_path / "run", teacher, corpus, qwen_tokenizer_dir)
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: cross-tokenizer distillation is not supported: teacher"), err
    assert "151680" in lines[-1] and "151936" in lines[-1]
    assert not (tmp_path / "run" / "checkpoints").exists()
