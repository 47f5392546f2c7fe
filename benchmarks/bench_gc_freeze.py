"""CPU of a short ``train.py fit`` with its imports frozen out of the garbage collector's reach (as shipped,
``skill_distill/gc_freeze.py``) against the same run with the collector as Python leaves it.

The tiny Qwen3 (real 151,936-token vocabulary, 2 layers, hidden 64) on 16 MATH-500 problems with the quickstart's
callbacks (checkpoints, export, loggers), ``--steps`` steps, one thread. "as shipped" is ``python train.py fit``;
"collector as is" is the same entry point started without the freeze (``python -c "import train_cli;
train_cli.run_from_command_line()" fit ...``). The two alternate, ``--runs`` times each; CPU is user + sys of the
child (``getrusage``), so it depends little on what else runs on the machine.

    SKILL_DISTILL_DATA=<mirror> .venv/bin/python benchmarks/bench_gc_freeze.py [--runs 3] [--steps 4]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "scripts"))


def child_cpu(cmd: list[str], env: dict, log: Path) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as out:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=1200)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:3])} exited {done.returncode}; its output: {log}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    import launch

    if not os.environ.get("SKILL_DISTILL_DATA"):
        raise SystemExit("error: set SKILL_DISTILL_DATA to the data mirror (the corpus is 16 MATH-500 problems)")
    work = Path(tempfile.mkdtemp(prefix="bench_gc_freeze_"))
    tiny = launch.tiny_model_dir()
    corpus = launch.write_short_corpus(Path(os.environ["SKILL_DISTILL_DATA"]), work / "corpus.jsonl")
    config = launch.quickstart_config(work / "plain.yaml", tiny, tiny, corpus)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    entry = {"as shipped": [sys.executable, str(REPO / "train.py")],
             "collector as is": [sys.executable, "-c", "import train_cli; train_cli.run_from_command_line()"]}
    cpu: dict[str, list[float]] = {name: [] for name in entry}
    for run in range(args.runs):
        for name, start in entry.items():
            run_dir = work / f"{name.replace(' ', '_')}_{run}"
            cmd = [*start, "fit", "--config", str(config), f"--trainer.default_root_dir={run_dir}",
                   f"--trainer.max_steps={args.steps}"]
            cpu[name].append(child_cpu(cmd, env, work / f"{run_dir.name}.log"))
            print(f"run {run + 1}, {name}: {cpu[name][-1]:.2f} CPU s", flush=True)
    shipped, plain = statistics.median(cpu["as shipped"]), statistics.median(cpu["collector as is"])
    print(f"median CPU s: as shipped {shipped:.2f}, collector as is {plain:.2f}; ratio {shipped / plain:.3f}x")
    print(f"(runs kept in {work})")


if __name__ == "__main__":
    main()
