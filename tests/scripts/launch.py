"""Helpers for tests that start training scripts as separate processes (distributed runs cannot run inside pytest:
Lightning's launchers re-run the command line in the child ranks)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tests" / "scripts"
TIMEOUT = 600
# variables of an enclosing launcher that would confuse the children's cluster detection
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR",
                 "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def script_env(port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(PYTHONPATH=str(REPO), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def command(script: str, **args) -> list[str]:
    cmd = [sys.executable, str(SCRIPTS / script)]
    for k, v in args.items():
        if v is True:
            cmd.append(f"--{k}")
        elif v is not None and v is not False:
            cmd += [f"--{k}", str(v)]
    return cmd


def start(script: str, port: int | None = None, log: Path | None = None, env_extra: dict | None = None,
          new_session: bool = False, **args) -> subprocess.Popen:
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command(script, **args), cwd=REPO, env=script_env(port or free_port(), **(env_extra or {})),
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=new_session)


def finish(proc: subprocess.Popen, log: Path | None, expect: int | None = 0) -> int:
    """Wait for ``proc``; assert its exit code (None: any) and show the log tail on failure."""
    try:
        rc = proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise AssertionError(f"timed out: {' '.join(map(str, proc.args))}\n{tail(log)}") from None
    if expect is not None:
        assert rc == expect, f"exit code {rc} (expected {expect}): {' '.join(map(str, proc.args))}\n{tail(log)}"
    return rc


def run(script: str, log: Path | None = None, expect: int | None = 0, **kw) -> int:
    return finish(start(script, log=log, **kw), log, expect)


def run_nodes(script: str, nodes: int, logs: list[Path], expect: int | None = 0, **args) -> list[int]:
    """Simulate ``nodes`` machines: one process per node with NODE_RANK set, sharing MASTER_ADDR/MASTER_PORT."""
    port = free_port()
    procs = [start(script, port=port, log=logs[n], env_extra={"NODE_RANK": str(n)}, **args) for n in range(nodes)]
    return [finish(p, log, expect) for p, log in zip(procs, logs, strict=False)]


def kill_group(proc: subprocess.Popen) -> None:
    """Kill what is left of a process group we started (e.g. a rank blocked in a collective after its peer died)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def tail(log: Path | None, n: int = 3000) -> str:
    return log.read_text()[-n:] if log and log.exists() else ""


def tiny_model_dir() -> Path:
    """A random Qwen3 with the real 151,936-token vocabulary, 2 layers, hidden 64 (1 head of 64), built once."""
    from skill_distill.assets import cache_dir, tiny_qwen3_dir

    return tiny_qwen3_dir(cache_dir() / "tiny-qwen3-h64", hidden_size=64, intermediate_size=128,
                          num_attention_heads=1, num_key_value_heads=1)


def write_short_corpus(shared_dir: Path, path: Path) -> Path:
    """16 real MATH-500 problems (the shortest of the first 200) with their solutions, cut short, as traces."""
    rows = [json.loads(line) for line in (shared_dir / "data/benchmarks/math500/test.jsonl").open()][:200]
    rows = sorted(rows, key=lambda r: (len(r["problem"]), r["problem"]))[:16]
    with path.open("w") as f:
        for i, r in enumerate(rows):
            f.write(json.dumps({"id": f"m{i:02d}", "problem": r["problem"], "trace": r["solution"][:240],
                                "answer": r["answer"]}) + "\n")
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def trace_by_step(run_dir: Path, rank: int, name: str = "step_trace") -> dict[int, dict]:
    """The last row of every step (a resumed run redoes the steps after its checkpoint and appends them again)."""
    return {row["step"]: row for row in read_rows(run_dir / f"{name}.rank{rank}.jsonl")}


def assert_same_training(ref: Path, run: Path, ranks: int, steps: int, loss_tol: float = 1e-6) -> None:
    """Same samples per step and rank in the same order, same losses (to ``loss_tol``), same learning rates and
    the same random draws as the uninterrupted reference run."""
    for rank in range(ranks):
        a, b = trace_by_step(ref, rank), trace_by_step(run, rank)
        assert sorted(a) == sorted(b) == list(range(1, steps + 1)), (rank, sorted(a), sorted(b))
        for step in a:
            assert a[step]["ids"] == b[step]["ids"], (rank, step, a[step]["ids"], b[step]["ids"])
            assert abs(a[step]["loss"] - b[step]["loss"]) <= loss_tol, (rank, step, a[step]["loss"], b[step]["loss"])
            assert a[step]["lr"] == b[step]["lr"], (rank, step, a[step]["lr"], b[step]["lr"])
            assert a[step]["epoch"] == b[step]["epoch"]
        ra, rb = trace_by_step(ref, rank, "rng"), trace_by_step(run, rank, "rng")
        assert ra == rb, (rank, ra, rb)


def redone_steps_match(run: Path, rank: int) -> list[int]:
    """Steps written twice (before the interruption and again after resuming); asserts the two rows are equal
    in ids and learning rate and returns them."""
    seen: dict[int, dict] = {}
    twice = []
    for row in read_rows(run / f"step_trace.rank{rank}.jsonl"):
        if row["step"] in seen:
            first = seen[row["step"]]
            assert (first["ids"], first["lr"]) == (row["ids"], row["lr"]), (first, row)
            assert abs(first["loss"] - row["loss"]) <= 1e-6, (first, row)
            twice.append(row["step"])
        seen[row["step"]] = row
    return twice


# ---- train.py runs of the shipped quickstart config -------------------------------------------------------------
TRACE = {"class_path": "callbacks.StepTraceCallback"}


def quickstart_config(path: Path, tiny: Path, tok: Path, corpus: Path, extra_callbacks=()) -> Path:
    """configs/quickstart.yaml as shipped (loggers, checkpointing, pre-emption, export, progress), with the tiny
    Qwen3, a 16-example corpus, fp32, and without its vLLM evaluation (too slow for a test)."""
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    t = cfg["trainer"]
    t["callbacks"] = [c for c in t["callbacks"] if c["class_path"] not in
                      ("callbacks.SkillEvalCallback", "lightning.pytorch.callbacks.RichProgressBar")]
    kinds = [c["class_path"] for c in t["callbacks"]]
    assert "callbacks.checkpointing.ResumableCheckpoint" in kinds and "callbacks.preemption.PreemptionCallback" in kinds
    for c in t["callbacks"]:
        if c["class_path"] == "callbacks.checkpointing.ResumableCheckpoint":
            c["init_args"].update(every_n_train_steps=2, keep_last=2)
    t["callbacks"] += [TRACE, *extra_callbacks]
    t.update(precision="32-true", enable_progress_bar=False, enable_model_summary=False)
    cfg["model"].update(model=str(tiny), attn_implementation="sdpa", learning_rate=1e-3, warmup_ratio=0.25)
    cfg["data"].update(corpus=str(corpus), tokenizer=str(tok), tree=None, attribution=None, profile=None,
                       val_corpus=None, selection={"strategy": "all"}, skill_format={"mode": "off"}, max_length=96,
                       examples_per_step=4)
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(cwd: Path, config: Path, *args: str, log: Path, expect: int | None = 0, wait: bool = True,
          env_extra: dict | None = None):
    """``python train.py fit --config CONFIG ARGS`` in ``cwd``, its output in ``log``; waits and checks the exit code
    (``wait=False``: returns the process)."""
    env = script_env(free_port(), PYTHONPATH=f"{REPO}{os.pathsep}{SCRIPTS}", **(env_extra or {}))
    env.pop("SKILL_DISTILL_RESUME_FROM", None)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "fit", "--config", str(config), *args],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return finish(proc, log, expect) if wait else proc


def train_in_process(monkeypatch, capfd, cwd: Path, config: Path, *args: str) -> tuple[int, str]:
    """``python train.py fit --config CONFIG ARGS`` in this process (its entry point, ``run_from_command_line``,
    reading sys.argv): (exit code, everything it wrote). For single-process runs that end before training or train
    a few steps, where a new process would spend most of its time importing torch and Lightning (kill -9 and
    several ranks keep their own processes)."""
    import train_cli

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [str(REPO / "train.py"), "fit", "--config", str(config), *args])
    monkeypatch.delenv("SKILL_DISTILL_RESUME_FROM", raising=False)
    capfd.readouterr()
    log_to(sys.stderr)  # this test's captured stderr, as a train.py process's log
    try:
        train_cli.run_from_command_line()
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        log_to(sys.__stderr__)  # not this test's capture, closed when it ends ("--- Logging error ---" later)
    out, err = capfd.readouterr()
    return code, out + err


def log_to(stream) -> None:
    """Point the stderr handlers of Lightning's and the project's loggers at ``stream``: they are made once per
    process, with the ``sys.stderr`` of their time (pytest's own handlers are left alone)."""
    import train_cli

    roots = ("lightning", *train_cli.PROJECT_LOGGERS)
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.split(".")[0] in roots and isinstance(logger, logging.Logger):
            for handler in logger.handlers:
                if type(handler) is logging.StreamHandler:
                    if getattr(handler.stream, "closed", False):  # an earlier test's capture: setStream would flush it
                        handler.stream = stream
                    else:
                        handler.setStream(stream)
