"""``python -m skill_distill run --config project.yaml``: the chain pool -> attribute -> profile -> select-report ->
fit -> evaluate on a tiny labelled chat corpus, with a tiny Qwen3 student on the HF backend (issue 27): a killed run
resumes, an unchanged stage is skipped, a changed one reruns with every stage after it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from skill_distill.io import ConfigError, OutputError, read_json, read_jsonl
from skill_distill.project import STATE_FILE, project_run, run_project

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ["Algebra", "Geometry", "Number Theory"]


def chat_corpus(path: Path, per_category: int = 10) -> Path:
    rows = []
    for c, category in enumerate(CATEGORIES):
        for k in range(per_category):
            answer = str(5 * k + c)
            rows.append({"uid": f"{c}-{k}", "category": category, "answer": answer, "messages": [
                {"role": "user", "content": f"{category} task {k}: what is 5*{k} + {c}?"},
                {"role": "assistant", "content": f"<think>\n5*{k} + {c} = {answer}\n</think>\n\nIt is {answer}."}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lean_fit_config(path: Path) -> Path:
    """The quickstart's training config without the in-training evaluation and the rich bar (the chain's evaluate
    stage evaluates)."""
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"]
                                   if not c["class_path"].endswith(("SkillEvalCallback", "RichProgressBar"))]
    path.write_text(yaml.safe_dump(cfg))
    return path


def project(tmp_path: Path, model: Path, tokenizer: Path, max_new_tokens: int = 8) -> dict:
    hf = {"class_path": "HFConfig", "init_args": {"dtype": "float32", "batch_size": 8}}
    return {
        "run_dir": str(tmp_path / "run"),
        "data": {"corpus": str(chat_corpus(tmp_path / "chat.jsonl")),
                 "fields": {"id": "uid", "messages": "messages", "answer": "answer"}, "label_field": "category"},
        "tree": {"from_labels": True},
        "student": {"model": str(model), "tokenizer": str(tokenizer), "enable_thinking": False},
        "pool": {"draw": {"heldout": 6, "seed": 1}, "decontamination": {"enabled": False},
                 "source": {"append_boxed_answer": True}},
        "profile": {"backend": hf, "sampling": {"temperature": 0.6, "max_new_tokens": max_new_tokens, "seed": 1},
                    "grading": {"workers": 1}},
        "select": {"selection": {"strategy": "skill", "budget": 12, "seed": 1}},
        "fit": {"config": str(lean_fit_config(tmp_path / "fit_base.yaml")),
                "overrides": {"trainer": {"max_steps": 2, "precision": "32-true", "limit_val_batches": 1},
                              "data": {"max_length": 128, "examples_per_step": 4}}},
        "evaluate": {"backend": hf, "sampling": {"temperature": 0.0, "max_new_tokens": 8, "seed": 0},
                     "grading": {"workers": 1}},
    }


def statuses(outcomes) -> dict[str, str]:
    return {o.name: o.status for o in outcomes}


def call(cfg: dict, until: str | None = None, plan: bool = False):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(run_project, as_positional=False)
    args = parser.instantiate(parser.parse_object({**cfg, "until": until, "plan": plan})).as_dict()
    return run_project(**args)


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow
def test_the_chain_resumes_after_a_kill_skips_what_is_unchanged_and_reruns_from_a_change(
        tmp_path, tiny_qwen3_dir, qwen_tokenizer_dir):
    cfg = project(tmp_path, tiny_qwen3_dir, qwen_tokenizer_dir)
    config_file = tmp_path / "project.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    run = Path(cfg["run_dir"])
    state = run / STATE_FILE

    # 1. the command, killed (SIGKILL) once train.py has started: train.py dies with it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen([sys.executable, "-m", "skill_distill", "run", "--config", str(config_file)],
                             cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def training() -> bool:
        if first.poll() is not None:
            pytest.fail(f"run ended before fit: {first.stderr.read().decode()[-2000:]}")
        return (run / "fit" / "run.lock").is_file()  # train.py holds its run directory

    wait_for(training, 900, "train.py to start training")
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(first.pid)], capture_output=True,
                                               text=True).stdout.split()]
    first.kill()
    first.wait()
    assert children, "train.py was not started as a child process"
    wait_for(lambda: not any(process_group_alive(pid) for pid in children), 30, "train.py to die with run")
    assert read_json(state)["stages"]["fit"]["done"] is False

    # 2. rerun: the finished stages are skipped, fit resumes, evaluate runs
    outcomes = call(cfg)
    assert statuses(outcomes) == {"pool": "skipped", "attribute": "skipped", "profile": "skipped",
                                  "select-report": "skipped", "fit": "resumed", "evaluate": "ran"}
    pool = read_jsonl(run / "pool" / "pool.jsonl")
    assert len(pool) == 24 and {r["category"] for r in pool} == set(CATEGORIES)  # kept into the pool
    assert all(r["trace"].endswith(f"\\boxed{{{r['answer']}}}.") for r in pool)  # append_boxed_answer
    assert json.loads((run / "attribute" / "skill_tree_used.json").read_text())["children"] == [
        {"name": c} for c in CATEGORIES]
    assert read_json(run / "fit" / "run_finished.json")
    report = read_json(run / "evaluate" / "report.json")  # the trained export, on the held-out slice, per label
    assert report["summary"]["heldout"]["problems"] == 6
    skills = {r["chain"] for r in report["benchmarks"]["heldout"]["metrics"]["skills"]}
    assert skills and skills <= set(CATEGORIES)

    # 3. nothing changed: everything is skipped (and the plan said so, writing nothing)
    written = state.stat().st_mtime_ns
    assert set(statuses(call(cfg, plan=True)).values()) == {"would skip"}
    assert state.stat().st_mtime_ns == written
    assert set(statuses(call(cfg)).values()) == {"skipped"}

    # 4. a changed profile setting reruns the profile and the stages after it, not those before
    changed = project(tmp_path, tiny_qwen3_dir, qwen_tokenizer_dir, max_new_tokens=6)
    assert statuses(call(changed, plan=True)) == {"pool": "would skip", "attribute": "would skip",
                                                  **{s: "would rerun" for s in ("profile", "select-report", "fit",
                                                                                "evaluate")}}
    assert statuses(call(changed, until="select-report")) == {
        "pool": "skipped", "attribute": "skipped", "profile": "rerun", "select-report": "rerun"}
    saved = read_json(state)["stages"]
    assert saved["fit"]["done"] is False and saved["evaluate"]["done"] is False  # they must rerun too
    assert read_json(run / "profile" / "profile_run.json")["sampling"]["max_new_tokens"] == 6


def test_the_shipped_example_parses_section_by_section_with_each_stage_parser(tmp_path, monkeypatch):
    from jsonargparse import ArgumentParser

    monkeypatch.chdir(REPO)  # the example's paths are relative to the checkout
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(run_project, as_positional=False)
    args = parser.instantiate(parser.parse_path(str(REPO / "configs" / "examples" / "own_data.yaml"))).as_dict()
    args.pop("until"), args.pop("plan")
    args["run_dir"] = str(tmp_path / "run")
    runner = project_run(**args)
    parsed = {stage: runner.parse(stage)[1] for stage in runner.sections}
    assert parsed["profile"].backend.model == "asset:smollm2-135m-instruct"  # the student, named once
    assert parsed["attribute"].backend.model == "asset:smollm2-135m-instruct"
    assert parsed["fit"]["settings"]["data"]["selection"]["budget"] == 96  # select's selection, trained on
    assert parsed["pool"].source.corpus == "data/quickstart/pool.jsonl"
    # the profile asks and grades as evaluation does (issue 27): one prompt, from student, and boxed answers only
    prompt = {key: getattr(parsed["profile"], key) for key in ("instruction", "enable_thinking")}
    assert prompt == {key: getattr(parsed["evaluate"], key) for key in prompt} == {
        key: parsed["fit"]["settings"]["data"][key] for key in prompt}  # training and its evaluations too
    assert prompt["instruction"] == args["student"].instruction and "\\boxed{}" in prompt["instruction"]
    assert parsed["profile"].answer_fallback == "none"  # evaluate grades the last \boxed{} only
    for section, where in (("profile", "profile"), ("evaluate", "evaluate")):
        with pytest.raises(ConfigError, match=rf"{where}.instruction: the prompt is set once, as student.instruction"):
            project_run(**{**args, section: {**args[section], "instruction": "Answer."}})
    fit = {**args["fit"], "overrides": {"data": {"enable_thinking": True}}}
    with pytest.raises(ConfigError, match=r"fit.overrides.data.enable_thinking: .* student.enable_thinking"):
        project_run(**{**args, "fit": fit})

    args["profile"] = {**args["profile"], "sampling": {"max_new_tokenz": 3}}
    with pytest.raises(ConfigError, match="project section 'profile': .*max_new_tokenz"):
        project_run(**args).run()
    assert not (tmp_path / "run" / "pool").exists()  # refused before any stage ran

    (tmp_path / "run" / "pool").mkdir(parents=True)  # a folder this run directory's state does not record
    with pytest.raises(OutputError, match=r"run/pool exists but .*run_state.json does not record it"):
        project_run(**args).run(until="pool")  # the bad profile section is not parsed: the run stops before it


# ---- the SLURM pipeline runs the same project config ----------------------------------------------------------------
@pytest.mark.slow
def test_the_slurm_pipeline_submits_the_projects_chain_after_parsing_it(tmp_path):
    """scripts/slurm/pipeline.sh --config PROJECT: one job per stage, each ``run --config PROJECT --until STAGE``,
    chained afterok; the project is parsed first (``run --plan true``), and a bad one queues nothing. ``sbatch`` (the
    cluster, the one external service here) is a script that records its arguments and answers a job id."""
    import shutil

    repo = tmp_path / "repo"
    for part in ("configs", "scripts/slurm", "data/quickstart"):
        shutil.copytree(REPO / part, repo / part)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "$@" >> "$SUBMITTED"\nwc -l < "$SUBMITTED" | tr -d " "\n')
    (bin_dir / "sbatch").chmod(0o755)
    submitted = tmp_path / "submitted.txt"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SUBMITTED": str(submitted),
           "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    for script in (repo / "scripts" / "slurm").iterdir():
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script

    def pipeline(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "scripts/slurm/pipeline.sh", "--config", "configs/examples/own_data.yaml",
                               "--run_dir", str(tmp_path / "run"), *args], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=600)

    stages = ["pool", "attribute", "profile", "select-report", "fit", "evaluate"]
    dry = pipeline("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert [f"[run] plan: {s}: would run" for s in stages] == [
        line.split(" (key")[0] for line in dry.stderr.splitlines() if line.startswith("[run] plan:")]
    assert not submitted.exists() and not (tmp_path / "run").exists()  # printed only; nothing ran or was written

    done = pipeline()
    assert done.returncode == 0, done.stderr
    jobs = submitted.read_text().splitlines()
    for i, (job, stage) in enumerate(zip(jobs, stages, strict=True)):
        assert job.endswith(f"scripts/slurm/stage.sbatch run --config configs/examples/own_data.yaml --run_dir "
                            f"{tmp_path / 'run'} --until {stage}"), job
        assert (f"--dependency afterok:{i}" in job) == (i > 0), job  # each after the one before
        assert ("--gpus-per-node 1" in job) == (stage not in ("pool", "select-report")), job
    assert done.stdout.strip() == "submitted: " + " ".join(f"{s}={i + 1}" for i, s in enumerate(stages))

    submitted.unlink()
    bad = pipeline("--profile.sampling.max_new_tokenz=3")
    assert bad.returncode == 2 and "project section 'profile'" in bad.stderr and "max_new_tokenz" in bad.stderr
    assert not submitted.exists()


def test_a_nested_override_keeps_the_other_keys_of_its_section():
    """``--pool.draw.size=24`` on the run command sets that key only: jsonargparse alone replaced ``pool.draw`` with
    ``{"size": "24"}``, dropping the config's held-out size and seed (found running the example with overrides)."""
    from jsonargparse import ArgumentParser

    from skill_distill.project import nested_section_overrides

    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(run_project, as_positional=False)
    parser.add_argument("--config", action="config")
    example = str(REPO / "configs" / "examples" / "own_data.yaml")
    argv = ["--config", example, "--pool.draw.size=24", "--profile.sampling.max_new_tokens", "512",
            "--select.selection.budget=16", "--fit.overrides.trainer.max_steps=3", "--run_dir=/tmp/x"]
    parsed = parser.parse_args(nested_section_overrides(argv))
    assert parsed.pool["draw"] == {"size": 24, "heldout": 40, "seed": 42}
    assert parsed.pool["decontamination"] == {"enabled": False}
    assert parsed.profile["sampling"] == {"temperature": 0.6, "top_p": 1.0, "max_new_tokens": 512, "n": 1, "seed": 42}
    assert parsed.profile["backend"]["class_path"] == "VLLMConfig"
    assert parsed.select["selection"] == {"strategy": "skill", "budget": 16, "seed": 42}
    assert parsed.fit["overrides"]["trainer"] == {"max_epochs": 1, "max_steps": 3}
    assert parsed.run_dir == "/tmp/x"
    untouched = ["--config", example, "--until", "pool"]
    assert nested_section_overrides(untouched) == untouched



_HOLD = """
import subprocess, sys, time
from pathlib import Path
mib, ready, below = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
held = bytearray(mib << 20)
held[::4096] = b"x" * len(held[::4096])  # every page written: resident
if below:  # start the next process down the tree and wait until it holds its memory
    sub = subprocess.Popen([sys.executable, "-c", __doc__ or sys.argv[0], *below])
    while not Path(below[1]).exists():
        time.sleep(0.02)
ready.write_text("ready")
time.sleep(120)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_the_run_memory_peak_is_the_whole_process_tree(tmp_path):
    """A child holding 200 MiB and its own child (this process's grandchild, as vLLM's worker is under its engine
    core) holding 300 MiB: the tree's peak counts both beside this process's own memory, above any single process."""
    from skill_distill.project import TreeMemory, process_tree

    script = f"__doc__ = {_HOLD!r}\n{_HOLD}"  # the grandchild runs the same code
    mib = 1 << 20
    with TreeMemory(interval_s=0.05) as memory:
        proc = subprocess.Popen([sys.executable, "-c", script, "200", str(tmp_path / "child"),
                                 "300", str(tmp_path / "grandchild")])
        try:
            wait_for((tmp_path / "child").exists, 60, "the child and the grandchild to hold their memory")
            tree = process_tree(os.getpid())
            assert proc.pid in tree and len(tree) >= 3, tree  # this process, the child, the grandchild
            time.sleep(0.3)  # a few samples
            own = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            peak = memory.mark()
        finally:
            for pid in process_tree(proc.pid)[::-1]:  # the grandchild first
                os.kill(pid, 9)
            proc.wait()
    assert peak >= own + 490 * mib, (peak / mib, own / mib)
    assert peak > max(own, 300 * mib)  # more than the largest single process of the three
