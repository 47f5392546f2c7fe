"""Decontamination speed: a 100,000-problem pool against every registered benchmark set (target: <= 60 s on 2 cores).

    nice .venv/bin/python benchmarks/bench_decontamination.py [--problems 100000] [--n 8 9 13]

The pool is synthetic and seeded: problems of 12-120 words (competition-problem length) drawn from the vocabulary
of the real benchmark problems and the quickstart corpus, with numbers; 1% of them are planted copies of real
benchmark problems (half verbatim but re-cased and re-spaced, half with one number changed). For each n the
``decontaminate`` stage runs end to end (loading the sets, indexing, reading and writing the pool and the hits);
printed: seconds, problems/s, hits, planted copies caught, and, side by side, the time of just reading and
writing the same pool as JSONL (the I/O floor) with the ratio. The benchmark files are the pinned assets
(``skill_distill/assets.py``: a ``SKILL_DISTILL_DATA`` mirror, the cache or a verified download).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skill_distill.decontamination import WORD, DecontaminationConfig, run_decontaminate
from skill_distill.eval_sets import REGISTRY, load_benchmark
from skill_distill.io import iter_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[1]



def make_pool(problems: int, seed: int = 0) -> tuple[list[dict], int]:
    bench = [p.problem for name in ("aime24", "aime25", "amc23", "math500", "olympiadbench")
             for p in load_benchmark(name).problems]
    # single words (``\\w+`` runs), so that a drawn token is not a whole formula copied from a benchmark
    words = [w for text in bench for w in WORD.findall(text)]
    words += [w for r in iter_jsonl(REPO / "data" / "quickstart" / "pool.jsonl") for w in WORD.findall(r["problem"])]
    rng = random.Random(seed)
    rows, planted = [], 0
    for i in range(problems):
        if i % 100 == 0:
            src = rng.choice(bench)
            if planted % 2 == 0:
                text = "  " + src.upper().replace(" ", "  ")
            else:
                m = re.search(r"\d+", src)
                text = src if m is None else src[: m.start()] + str(int(m.group()) + 7) + src[m.end():]
            planted += 1
        else:
            text = " ".join(rng.choice(words) if rng.random() > 0.1 else str(rng.randrange(1000))
                            for _ in range(rng.randint(12, 120)))
        rows.append({"id": f"p{i}", "problem": text, "trace": "", "answer": "1", "pass_rate": None})
    return rows, planted


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=100_000)
    ap.add_argument("--n", type=int, nargs="+", default=[8, 9, 13])
    args = ap.parse_args()
    rows, planted = make_pool(args.problems)
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool.jsonl"
        write_jsonl(pool, rows)
        del rows
        t0 = time.perf_counter()
        write_jsonl(Path(tmp) / "copy.jsonl", iter_jsonl(pool))  # the I/O floor: parse and write every row
        floor = time.perf_counter() - t0
        print(f"pool: {args.problems} problems ({planted} planted copies of benchmark problems); sets: "
              f"{', '.join(REGISTRY)}; read+write floor {floor:.2f} s")
        for n in args.n:
            t0 = time.perf_counter()
            s = run_decontaminate(str(pool), str(Path(tmp) / f"clean{n}" / "pool.jsonl"),
                                  DecontaminationConfig(n=n))
            took = time.perf_counter() - t0
            with open(s["hits_file"], encoding="utf-8") as f:
                caught = {h["id"] for h in map(json.loads, f) if int(h["id"][1:]) % 100 == 0}
            print(f"n={n:>2}: {took:6.2f} s ({args.problems / took:,.0f} problems/s, {took / floor:.1f}x the I/O "
                  f"floor); removed {s['removed']} problems, {len(caught)} of {planted} planted copies; "
                  f"{'within' if took <= 60 else 'OVER'} the 60 s target")


if __name__ == "__main__":
    main()
