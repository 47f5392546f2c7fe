"""Grading throughput: 2 worker processes vs 1 (in-process) on real benchmark answers.

    .venv/bin/python benchmarks/bench_grading.py [--workers 2] [--repeat 1]

Checks: for every MATH-500 and OlympiadBench row, two answers graded against the row's gold, each written as
``\\boxed{...}`` after a short reasoning block: the gold itself and a perturbed gold (an integer plus one, else the
first digit bumped), so half the checks are wrong. The two checks of a row are adjacent, so they land in the same
worker chunk and both modes parse each gold once (gold parses are cached per process). ``--repeat`` replays the
set. Prints checks/s of each mode and the ratio (target >= 1.7x), and checks that both modes return identical
verdicts. Worker start-up is not timed (a Grader is started once per stage). Timings on shared machines are noisy;
the ratio is measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skill_distill.grading import Grader  # noqa: E402

SHARED = Path(os.environ.get("SKILL_DISTILL_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def _perturb(gold: str) -> str:
    if re.fullmatch(r"-?\d+(\.0+)?", gold):
        return str(int(float(gold)) + 1)
    m = re.search(r"\d", gold)
    if m is None:
        return gold + "+1"
    i = m.start()
    return gold[:i] + str((int(gold[i]) + 1) % 10) + gold[i + 1:]


def checks(repeat: int) -> tuple[list[str], list[str | list[str]]]:
    outputs, golds = [], []
    for name, field in (("math500", "answer"), ("olympiadbench", "final_answer")):
        path = SHARED / "data" / "benchmarks" / name / "test.jsonl"
        for line in path.read_text().splitlines():
            row = json.loads(line)
            gold = row[field]
            first = str(gold[0] if isinstance(gold, list) else gold).strip().strip("$").strip()
            for answer in (first, _perturb(first)):
                outputs.append(f"<think>Let me work it out step by step.</think>\nThe answer is $\\boxed{{{answer}}}$.")
                golds.append([str(g) for g in gold] if isinstance(gold, list) else str(gold))
    return outputs * repeat, golds * repeat


def run(workers: int, outputs, golds) -> tuple[float, list]:
    with Grader(workers=workers, timeout_s=5.0) as grader:  # worker start-up is outside the timing
        t0 = time.perf_counter()
        verdicts = grader.grade(outputs, golds)
        elapsed = time.perf_counter() - t0
    return elapsed, verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    outputs, golds = checks(args.repeat)
    print(f"{len(outputs)} checks (MATH-500 + OlympiadBench golds, half perturbed, x{args.repeat})")
    t1, v1 = run(0, outputs, golds)
    tn, vn = run(args.workers, outputs, golds)
    assert [v.correct for v in v1] == [v.correct for v in vn], "worker and in-process verdicts differ"
    correct = sum(v.correct for v in v1)
    print(f"verdicts: {correct} correct, {len(v1) - correct} wrong, {sum(v.timed_out for v in v1)} timeouts")
    print(f"1 process:             {len(outputs) / t1:8.0f} checks/s ({t1:.2f} s)")
    print(f"{args.workers} worker processes:    {len(outputs) / tn:8.0f} checks/s ({tn:.2f} s)")
    print(f"speed-up: {t1 / tn:.2f}x (target >= 1.7x)")


if __name__ == "__main__":
    main()
