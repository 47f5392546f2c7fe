"""A training run never loses data or takes another run's state (issue 12, the training side): the shipped
quickstart config (tiny Qwen3, 8 steps, its evaluation left out) stops on SIGTERM with a checkpoint and exit 143 and
resumes equal to an uninterrupted run with its whole metrics history; the run directory holds everything; an
earlier run is resumed only when asked, a finished one is not retrained, a refused resume changes no file; a
truncated latest checkpoint falls back to the previous one; a full disk fails in one line without leftovers; user
mistakes are one line."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
import launch
from launch import quickstart_config, train, train_in_process

REPO = Path(__file__).resolve().parents[1]
STEPS = 8  # 16 examples, 4 per step, 2 epochs
def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time (ns)."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def metric_steps(run: Path, column: str = "train/loss") -> list[int]:
    with (run / "logs" / "metrics.csv").open() as f:
        return sorted({int(r["step"]) for r in csv.DictReader(f) if r.get(column)})


def last_line(log: Path) -> str:
    return log.read_text().strip().splitlines()[-1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, shared_dir, qwen_tokenizer_dir):
    root = tmp_path_factory.mktemp("run_safety")
    return {"root": root, "corpus": launch.write_short_corpus(shared_dir, root / "corpus.jsonl"),
            "tiny": launch.tiny_model_dir(), "tok": qwen_tokenizer_dir}


def side_by_side(**jobs) -> dict[str, Future]:
    """Run ``jobs`` (functions that launch train.py and wait for it) in threads at once and wait for all of them.
    Each launch spends most of its time importing torch and Lightning, so one after another the module's 14 train.py
    launches took minutes. A test calls its job's ``.result()``, which raises that job's failure in that test."""
    with ThreadPoolExecutor(len(jobs)) as pool:
        return {name: pool.submit(job) for name, job in jobs.items()}


def user_mistakes(root: Path, plain: Path) -> list[tuple[list[str], str]]:
    """Each user mistake: its train.py arguments and the expected last line."""
    cases = [
        (["--trainer.max_step=2"], ("error: unrecognized arguments: --trainer.max_step=2; did you mean "
                                    "--trainer.max_steps? (every option: python train.py fit --help)")),
        (["--ckpt_path", "nope.ckpt"], ("error: --ckpt_path nope.ckpt: no such checkpoint; use --ckpt_path last to "
                                        "resume the run in runs/quickstart, or a path to an existing .ckpt")),
        (["--data.val_corpus=missing.jsonl"], ("error: data.val_corpus (the validation corpus): corpus file not "
                                               "found: missing.jsonl")),
        (["--model.optimizer_implementation=fast"], ("error: model.optimizer_implementation: Expected a typing."
                                                     "Literal['fused', 'foreach', 'for-loop']. Got value: fast")),
    ]
    bad_yaml = root / "bad.yaml"
    bad_yaml.write_text("model:\n  learning_rate: [1\n")
    cases.append((["--config", str(bad_yaml)], f"error: {bad_yaml}:3:1: YAML syntax error: expected ',' or ']'"))
    typo = root / "typo.yaml"
    typo.write_text("model:\n  lerning_rate: 1.0\n")
    cases.append((["--config", str(typo)], ("error: Subcommand 'fit' does not accept option 'model.lerning_rate'; "
                                            "did you mean model.learning_rate?")))
    return cases


def full_disk(inputs) -> tuple[Path, Path]:
    cwd = inputs["root"] / "disk_full"
    cwd.mkdir()
    config = quickstart_config(cwd / "config.yaml", inputs["tiny"], inputs["tok"], inputs["corpus"], [
        {"class_path": "faults.DiskFullAtSave", "init_args": {"step": 4}}])
    log = inputs["root"] / "disk_full.log"
    train(cwd, config, log=log, expect=2)
    return cwd, log


@pytest.fixture(scope="module")
def first_wave(inputs) -> dict[str, Future]:
    """Side by side: an uninterrupted run and one stopped by SIGTERM after step 3, both of the quickstart config;
    a run whose disk fills during a save."""
    root, corpus, tiny, qwen_tokenizer_dir = inputs["root"], inputs["corpus"], inputs["tiny"], inputs["tok"]
    plain = quickstart_config(root / "plain.yaml", tiny, qwen_tokenizer_dir, corpus)
    signalled = quickstart_config(root / "sigterm.yaml", tiny, qwen_tokenizer_dir, corpus, [
        {"class_path": "faults.SignalAtStep", "init_args": {"step": 3, "signum": 15}}])
    (root / "ref").mkdir()
    (root / "stopped").mkdir()
    return side_by_side(
        ref=lambda: train(root / "ref", plain, log=root / "ref.log"),
        stopped=lambda: train(root / "stopped", signalled, log=root / "stopped.log", expect=143),
        full_disk=lambda: full_disk(inputs))


@pytest.fixture(scope="module")
def runs(inputs, first_wave):
    first_wave["ref"].result()
    first_wave["stopped"].result()
    return {"root": inputs["root"], "plain": inputs["root"] / "plain.yaml", "corpus": inputs["corpus"],
            "tiny": inputs["tiny"], "tok": inputs["tok"], "ref": inputs["root"] / "ref" / "runs" / "quickstart",
            "stopped": inputs["root"] / "stopped" / "runs" / "quickstart"}


def copy_run(runs, name: str, source: str = "stopped") -> tuple[Path, Path]:
    """A copy of a run's working directory (the run directory inside it), to act on without touching the original."""
    cwd = runs["root"] / name
    shutil.copytree(runs[source].parents[1], cwd, symlinks=True)
    return cwd, cwd / "runs" / "quickstart"


def resume_stopped(runs) -> tuple[Path, Path]:
    cwd, run = copy_run(runs, "resumed")
    log = runs["root"] / "resumed.log"
    train(cwd, runs["plain"], "--ckpt_path", "last", log=log)
    return run, log


def resume_from_a_truncated_checkpoint(runs) -> tuple[Path, Path]:
    cwd, run = copy_run(runs, "truncated")
    newest = run / "checkpoints" / "step=0000003.ckpt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    log = runs["root"] / "truncated.log"
    train(cwd, runs["plain"], "--ckpt_path", "last", log=log)
    return run, log


def run_elsewhere(runs) -> dict:
    cwd, _ = copy_run(runs, "moved", source="stopped")  # runs/quickstart holds an interrupted run
    other = cwd / "elsewhere"
    log = runs["root"] / "moved.log"
    before = snapshot(cwd / "runs")
    train(cwd, runs["plain"], f"--trainer.default_root_dir={other}", "--ckpt_path", "last",
          "--trainer.max_steps=2", log=log)
    return {"other": other, "log": log, "before": before, "after": snapshot(cwd / "runs")}


@pytest.fixture(scope="module")
def second_wave(runs) -> dict[str, Future]:
    """Side by side, each on its own copy of a first-wave run directory."""
    return side_by_side(**{job.__name__: (lambda job=job: job(runs)) for job in (
        resume_stopped, resume_from_a_truncated_checkpoint, run_elsewhere)})


@pytest.mark.slow
def test_sigterm_on_quickstart_exits_143_with_checkpoint_and_resume_equals_uninterrupted(runs, second_wave):
    stopped_log = (runs["root"] / "stopped.log").read_text()
    assert "stop requested by signal (SIGTERM): checkpoint saved at step 3; exiting with code 143" in stopped_log
    assert "args parameter" not in stopped_log  # LightningCLI's warning about main(sys.argv[1:]) is gone
    stopped = runs["stopped"]
    assert (stopped / "checkpoints" / "last.ckpt").resolve().name == "step=0000003.ckpt"
    assert not (stopped / "hf_export").exists() and not (stopped / "run_finished.json").exists()
    assert metric_steps(stopped) == [0, 1, 2]  # Lightning's step column counts from 0

    run, log = second_wave["resume_stopped"].result()
    launch.assert_same_training(runs["ref"], run, ranks=1, steps=STEPS)
    assert launch.redone_steps_match(run, 0) == []  # the SIGTERM checkpoint was taken after step 3: nothing redone
    # the metrics history is whole: the steps before the stop and after the resume, once each as in the reference
    assert metric_steps(run) == metric_steps(runs["ref"]) == list(range(STEPS))
    assert (run / "hf_export" / "final" / "model.safetensors").is_file()
    assert sorted(p.name for p in (run / "logs").glob("config*.yaml")) == ["config.resume-1.yaml", "config.yaml"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step=0000006.ckpt",
                                                                       "step=0000008.ckpt"]
    # progress lines and the closing summary show in a redirected log
    text = log.read_text()
    assert "step 4/8 epoch 0: loss" in text and "step 8/8 epoch 1: loss" in text
    assert f"run runs/quickstart: step {STEPS}" in text and "checkpoints: runs/quickstart/checkpoints" in text
    assert "export: runs/quickstart/hf_export/final" in text


@pytest.mark.slow
@pytest.mark.parametrize("ckpt_path", ["last", "runs/quickstart/checkpoints/step=0000003.ckpt"])
def test_changed_learning_rate_on_resume_is_refused_and_changes_no_file(runs, ckpt_path, monkeypatch, capfd):
    # refused before training: in this process (a train.py process spends most of its time importing).
    # An explicit checkpoint file is the case Lightning's LightningCLI._parse_ckpt_path would have answered by
    # copying the checkpoint's learning rate over the command line's (train_cli.SkillCLI overrides it)
    cwd, _ = copy_run(runs, "changed_lr_" + ckpt_path.replace("/", "_"))
    before = snapshot(cwd)
    code, text = train_in_process(monkeypatch, capfd, cwd, runs["plain"], "--ckpt_path", ckpt_path,
                                  "--model.learning_rate=0.002")
    assert code == 2
    assert text.strip().splitlines()[-1].startswith("error: model.learning_rate is 0.002 here but 0.001 in the "
                                                    "checkpoint runs/quickstart/checkpoints/step=0000003.ckpt")
    assert "Traceback" not in text
    assert snapshot(cwd) == before


@pytest.mark.slow
def test_finished_run_resumed_is_a_no_op_and_rerun_without_resume_is_refused(runs, monkeypatch, capfd):
    cwd, _ = copy_run(runs, "finished", source="ref")
    before = snapshot(cwd)
    code, text = train_in_process(monkeypatch, capfd, cwd, runs["plain"], "--ckpt_path", "last")
    assert code == 0 and "runs/quickstart: this run already finished (step 8); nothing to do" in text
    assert snapshot(cwd) == before
    code, text = train_in_process(monkeypatch, capfd, cwd, runs["plain"])
    line = text.strip().splitlines()[-1]
    assert code == 2 and line.startswith(
        "error: runs/quickstart holds an earlier run (checkpoints, logs/metrics.csv, tb, hf_export, "
        "run_finished.json): resume it with --ckpt_path last, or start a new run with --trainer.default_root_dir"), line
    assert snapshot(cwd) == before


@pytest.mark.slow
def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(runs, second_wave):
    run, log = second_wave["resume_from_a_truncated_checkpoint"].result()
    assert ("warning: runs/quickstart/checkpoints/step=0000003.ckpt is unreadable (not a readable torch checkpoint "
            "(File is not a zip file)): resuming from runs/quickstart/checkpoints/step=0000002.ckpt, the newest "
            "readable checkpoint") in log.read_text()
    launch.assert_same_training(runs["ref"], run, ranks=1, steps=STEPS)
    assert launch.redone_steps_match(run, 0) == [3]


@pytest.mark.slow
def test_default_root_dir_moves_everything_and_last_never_takes_another_runs_checkpoint(second_wave):
    out = second_wave["run_elsewhere"].result()
    other = out["other"]
    assert "no checkpoint yet, starting a new run" in out["log"].read_text()
    assert out["after"] == out["before"]  # the other run is untouched
    names = {p.name for p in other.iterdir()}
    assert {"checkpoints", "logs", "tb", "hf_export", "step_trace.rank0.jsonl", "run_finished.json"} <= names, names
    # the summary gives the run's peak memory: the whole process tree's (sampled) and the largest process's
    memory = json.loads((other / "run_finished.json").read_text())["peak_memory_gb"]
    assert 0.3 < memory["largest_process"] < 64 and 0.3 < memory["process_tree"] < 64, memory
    assert f"peak memory of this run: {memory['process_tree']:.1f} GB" in out["log"].read_text()
    assert (other / "checkpoints" / "last.ckpt").resolve().name == "step=0000002.ckpt"
    assert metric_steps(other) == [0, 1]
    assert launch.trace_by_step(other, 0).keys() == {1, 2}  # trained from step 0, not from the other run's step 3


@pytest.mark.slow
def test_full_disk_during_a_save_removes_its_temporary_and_fails_in_one_line(first_wave):
    cwd, log = first_wave["full_disk"].result()
    ckpts = cwd / "runs" / "quickstart" / "checkpoints"
    line = last_line(log)
    assert line.startswith(f"error: no space left on the device of {Path('runs/quickstart/checkpoints')} while "
                           "saving a checkpoint: one needs about "), line
    assert "Traceback" not in log.read_text()
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step=0000002.ckpt"]  # no temporary left


@pytest.mark.slow
def test_user_mistakes_are_one_line(inputs, monkeypatch, capfd):
    root = inputs["root"] / "mistakes"
    root.mkdir()
    plain = quickstart_config(root / "plain.yaml", inputs["tiny"], inputs["tok"], inputs["corpus"])
    for args, expected in user_mistakes(root, plain):
        code, text = train_in_process(monkeypatch, capfd, root, plain, *args)
        last = text.strip().splitlines()[-1] if text.strip() else ""
        assert code == 2 and last.startswith(expected), (args, code, last)
        assert "usage:" not in text and "Traceback" not in text, text[-2000:]
    assert not (root / "runs" / "quickstart" / "selection_manifest.json").exists()
    proc = subprocess.run([sys.executable, "-m", "skill_distill", "pool", "--nope"], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=launch.script_env(launch.free_port()), check=False)
    assert proc.returncode == 2 and "python -m skill_distill pool --help" in proc.stderr


def test_csv_logger_appends_to_an_earlier_history(tmp_path):
    from callbacks.run_loggers import RunCSVLogger

    first = RunCSVLogger(save_dir=str(tmp_path))
    first.log_metrics({"train/loss": 1.0}, step=1)
    first.save()
    second = RunCSVLogger(save_dir=str(tmp_path))  # a resumed run: Lightning's CSVLogger deleted the file here
    second.log_metrics({"train/loss": 0.5}, step=2)
    second.log_metrics({"eval/acc": 0.25}, step=2)  # a new column rewrites the header, keeping the rows
    second.save()
    with (tmp_path / "logs" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["train/loss"], r.get("eval/acc")) for r in rows] == [("1", "1.0", ""), ("2", "0.5", ""),
                                                                               ("2", "", "0.25")]


def test_profile_missing_leaves_is_said_when_training_starts(tmp_path, qwen_tokenizer_dir, caplog):
    import json
    import logging

    from datamodules import SkillDataModule
    from skill_distill.selection import SelectionConfig

    data = REPO / "data" / "quickstart"
    profile = json.loads((data / "profile" / "profile.json").read_text())
    deepest = max(n["chain"].count("->") for n in profile["nodes"])
    leaves = [n["chain"] for n in profile["nodes"] if n["chain"].count("->") == deepest and n.get("judged")]
    profile["nodes"] = [n for n in profile["nodes"] if n["chain"] not in leaves[:3]]
    (tmp_path / "profile.json").write_text(json.dumps(profile))
    dm = SkillDataModule(corpus=str(data / "pool.jsonl"), tokenizer=str(qwen_tokenizer_dir),
                         tree=str(data / "tree.json"),
                         attribution=str(data / "attribution.jsonl"), profile=str(tmp_path / "profile.json"),
                         selection=SelectionConfig(strategy="skill", budget=96, seed=42), max_length=384)
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        dm.setup("fit")
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("selection: ")]
    assert any(n.startswith("selection: 3 of ") and "leaves have no judged example and are never drawn" in n
               for n in notes), notes


@pytest.mark.slow
def test_kill_between_the_final_checkpoint_and_the_end_of_fit_resumes_to_the_export_and_summary(runs, monkeypatch,
                                                                                                 capfd):
    # the state a kill leaves after the last step's checkpoint and before the export and the summary were written
    cwd, run = copy_run(runs, "killed_at_end", source="ref")
    shutil.rmtree(run / "hf_export")
    (run / "run_finished.json").unlink()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    code, text = train_in_process(monkeypatch, capfd, cwd, runs["plain"], "--ckpt_path", "last")  # trains nothing
    assert code == 0, text[-3000:]
    assert (run / "hf_export" / "final" / "model.safetensors").is_file()
    assert (run / "run_finished.json").is_file()
    assert metric_steps(run) == list(range(STEPS))  # nothing retrained
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == checkpoints
    assert "export: runs/quickstart/hf_export/final" in text


@pytest.mark.slow
def test_a_data_file_moved_with_the_same_bytes_resumes_and_changed_bytes_are_refused(runs, monkeypatch, capfd):
    cwd, _ = copy_run(runs, "moved_corpus")
    moved = cwd / "moved.jsonl"
    shutil.copyfile(runs["corpus"], moved)
    # one process, steps 4-8: in this one
    code, text = train_in_process(monkeypatch, capfd, cwd, runs["plain"], "--ckpt_path", "last",
                                  f"--data.corpus={moved}")
    assert code == 0, text[-3000:]
    launch.assert_same_training(runs["ref"], cwd / "runs" / "quickstart", ranks=1, steps=STEPS)

    cwd, _ = copy_run(runs, "changed_corpus")
    changed = cwd / "changed.jsonl"
    rows = runs["corpus"].read_text().splitlines()
    changed.write_text("\n".join(rows[1:]) + "\n")  # one example fewer
    before = snapshot(cwd)
    code, text = train_in_process(monkeypatch, capfd, cwd, runs["plain"], "--ckpt_path", "last",
                                  f"--data.corpus={changed}")  # refused before training: in this process
    line = text.strip().splitlines()[-1]
    assert code == 2 and line.startswith("error: data.corpus is "), line
    assert "different content" in line
    assert snapshot(cwd) == before


@pytest.mark.slow
def test_every_setting_that_defines_the_run_is_refused_on_resume_by_its_key(runs, monkeypatch, capfd):
    """Precision, the global seed and a key inside a settings group, changed on resume: each refused in one line
    naming that key (issue 28: they trained on, and a changed budget was reported as the whole selection block).
    Refused before training, so in this process."""
    jobs = {"precision": (["--trainer.precision=bf16-mixed"], 'error: trainer.precision is "bf16-mixed" here but '
                                                               '"32-true" in the checkpoint'),
            "seed": (["--seed_everything=7"], "error: seed_everything is 7 here but 42 in the checkpoint"),
            "budget": (["--data.selection.budget=12"], "error: data.selection.budget is 12 here but ")}
    for name, (args, expected) in jobs.items():
        cwd, _ = copy_run(runs, f"changed_{name}")
        before = snapshot(cwd)
        code, text = train_in_process(monkeypatch, capfd, cwd, runs["plain"], "--ckpt_path", "last", *args)
        line = text.strip().splitlines()[-1]
        assert code == 2 and line.startswith(expected), (name, code, line)
        assert len(line) < 400 and snapshot(cwd) == before


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_keeps_the_metrics_rows_up_to_it(runs, tmp_path):
    # checkpoints every 2 steps and rows buffered for 10: before the fix the rows of steps 2-4 were still in memory
    # when the kill came at step 5, and the resume (from step 4) starts after them
    killed = quickstart_config(tmp_path / "kill9.yaml", runs["tiny"], runs["tok"], runs["corpus"], [
        {"class_path": "faults.SignalAtStep", "init_args": {"step": 5, "signum": 9}}])
    cwd = tmp_path / "run"
    cwd.mkdir()
    train(cwd, killed, log=tmp_path / "killed.log", expect=-9)
    run = cwd / "runs" / "quickstart"
    assert (run / "checkpoints" / "last.ckpt").resolve().name == "step=0000004.ckpt"
    assert metric_steps(run) == [0, 1, 2, 3]  # every step up to the checkpoint a resume starts after
    train(cwd, runs["plain"], "--ckpt_path", "last", log=tmp_path / "resumed.log")
    assert metric_steps(run) == list(range(STEPS))


@pytest.mark.slow
@pytest.mark.distributed
def test_full_disk_on_rank_0_of_two_stops_both_ranks_in_one_line_without_leftovers(inputs):
    # DDP: rank 0 writes the file and fails before the closing barrier rank 1 waits in; both ranks agree to stop
    cwd = inputs["root"] / "disk_full_ddp"
    cwd.mkdir()
    config = quickstart_config(cwd / "config.yaml", inputs["tiny"], inputs["tok"], inputs["corpus"], [
        {"class_path": "faults.DiskFullAtSave", "init_args": {"step": 2}}])
    log = inputs["root"] / "disk_full_ddp.log"
    train(cwd, config, "--trainer.devices=2", "--trainer.strategy=ddp", "--data.examples_per_step=2", log=log,
          expect=2)
    line = last_line(log)
    assert line.startswith(f"error: no space left on the device of {Path('runs/quickstart/checkpoints')} while "
                           "saving a checkpoint"), line
    assert "Traceback" not in log.read_text()
    assert list((cwd / "runs" / "quickstart" / "checkpoints").iterdir()) == []  # the half-written file is gone


@pytest.mark.slow
def test_a_run_refused_during_setup_leaves_its_directory_to_the_corrected_command(inputs, tmp_path, monkeypatch,
                                                                                    capfd):
    """Bad bytes in the corpus, an empty corpus, a bad selection budget, a too short max_length: each refused in one
    line, exit 2. Lightning had already created tb/ and logs/ by then, and the corrected command was refused as
    "holds an earlier run (tb)" (issue 28 §2). Now the run directory is left as it was, and the corrected command
    starts the run."""
    bad_bytes = tmp_path / "bad_bytes.jsonl"
    rows = inputs["corpus"].read_bytes().splitlines(keepends=True)
    bad_bytes.write_bytes(b"".join(rows[:3]) + rows[3].replace(b'"problem": "', b'"problem": "\xff\xfe', 1)
                          + b"".join(rows[4:]))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    plain = quickstart_config(tmp_path / "plain.yaml", inputs["tiny"], inputs["tok"], inputs["corpus"])
    cases = {"bad_bytes": [f"--data.corpus={bad_bytes}"], "empty": [f"--data.corpus={empty}"],
             "budget": ["--data.selection.budget=-3"], "max_length": ["--data.max_length=16"]}

    for name, args in cases.items():  # refused before training: in this process
        cwd = tmp_path / name
        cwd.mkdir()
        code, text = train_in_process(monkeypatch, capfd, cwd, plain, *args)
        line = text.strip().splitlines()[-1]
        left = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*") if p.name != "runs")
        assert code == 2 and line.startswith("error: ") and len(line) < 400, (name, code, line)
        assert "Traceback" not in text, (name, text[-2000:])
        assert left == [], (name, line, left)  # not even the run directory (runs/quickstart)
    # the corrected command starts the run where the refused one was
    log = tmp_path / "corrected.log"
    train(tmp_path / "empty", plain, "--trainer.max_steps=1", log=log)
    run = tmp_path / "empty" / "runs" / "quickstart"
    assert (run / "run_finished.json").is_file() and metric_steps(run) == [0]


def test_a_resumed_csv_history_drops_the_rows_after_its_checkpoint(tmp_path):
    """The rows an attempt wrote after its last checkpoint (step 4) are dropped when the next attempt resumes from
    it: the later steps', and at step 4 the next optimizer step's (Lightning logs step k+1 at step k); the epoch-end
    evaluation logged at step 4 before that checkpoint stays (issue 28 §3: redone steps appeared 2-3 times)."""
    from callbacks.run_loggers import RunCSVLogger

    first = RunCSVLogger(save_dir=str(tmp_path))
    for step in range(6):  # optimizer steps 1..6, logged at 0..5
        first.log_metrics({"lr-AdamW": 0.1, "epoch": 0}, step=step)
        first.log_metrics({"train/loss": 1.0 / (step + 1), "epoch": 0}, step=step)
        if step == 3:  # epoch end after optimizer step 4: its evaluation, then its checkpoint
            first.log_metrics({"eval/heldout/acc": 0.25}, step=4)
    first.save()
    resumed = RunCSVLogger(save_dir=str(tmp_path))
    resumed.resume_at(4)
    resumed.log_metrics({"train/loss": 0.2, "epoch": 1}, step=4)
    resumed.save()
    with (tmp_path / "logs" / "metrics.csv").open() as f:
        rows = [(r["step"], next(k for k in sorted(r) if r[k] and k not in ("step", "epoch")))
                for r in csv.DictReader(f)]
    assert rows == [(str(s), k) for s in range(4) for k in ("lr-AdamW", "train/loss")] + [
        ("4", "eval/heldout/acc"), ("4", "train/loss")]
    assert RunCSVLogger(save_dir=str(tmp_path)).experiment.drop_rows_after(5) == 0  # nothing after: no rewrite


@pytest.mark.slow
def test_kill_9_after_a_flush_past_the_checkpoint_then_resume_logs_every_step_once(inputs, tmp_path):
    """Rows flushed after the checkpoint (here every row at once) are redone by the resume: each step once."""
    # the process dies (os._exit, as kill -9) when step 6 starts, after step 5's row is written; checkpoint: step 4
    killed = quickstart_config(tmp_path / "kill9.yaml", inputs["tiny"], inputs["tok"], inputs["corpus"], [
        {"class_path": "faults.CrashAfterStep", "init_args": {"step": 5}}])
    cfg = yaml.safe_load(killed.read_text())
    for logger in cfg["trainer"]["logger"]:
        if logger["class_path"].endswith("RunCSVLogger"):
            logger["init_args"] = {"flush_logs_every_n_steps": 1}
    killed.write_text(yaml.safe_dump(cfg))
    cwd = tmp_path / "run"
    cwd.mkdir()
    train(cwd, killed, log=tmp_path / "killed.log", expect=17)
    run = cwd / "runs" / "quickstart"
    assert (run / "checkpoints" / "last.ckpt").resolve().name == "step=0000004.ckpt"
    assert metric_steps(run) == [0, 1, 2, 3, 4]  # step 5's row (logged at 4) was flushed before the kill
    cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"] if c["class_path"] != "faults.CrashAfterStep"]
    killed.write_text(yaml.safe_dump(cfg))
    train(cwd, killed, "--ckpt_path", "last", log=tmp_path / "resumed.log")
    with (run / "logs" / "metrics.csv").open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == list(range(STEPS)), steps
