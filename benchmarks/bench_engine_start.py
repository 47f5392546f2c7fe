"""vLLM engine start-up with its engine core in the calling process vs in a process of its own, SmolLM2-135M-Instruct.

    .venv/bin/python benchmarks/bench_engine_start.py [--rounds 2] [--prompts 16] [--max-new-tokens 32]

Why it exists: ``VLLMBackend`` runs vLLM's engine core in-process on CPU and in its own process (vLLM's default) on
GPU (``engine_process`` in skill_distill/generation/vllm_backend.py). Every stage and every per-epoch evaluation
starts an engine, so its start-up is paid many times per run. Each measurement is a fresh process that builds a
``VLLMBackend`` (timed: engine start), then generates ``--prompts`` sampled completions of up to ``--max-new-tokens``
tokens (timed: generate). The two modes alternate within each round, so both see the same machine. Prints the
medians and the ratio own-process / in-process (above 1: in-process is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def child(own_process: bool, prompts: int, max_new_tokens: int) -> None:
    from skill_distill.assets import smollm2_dir
    from skill_distill.generation.base import SamplingConfig
    from skill_distill.generation.vllm_backend import VLLMBackend

    t0 = time.perf_counter()
    backend = VLLMBackend(str(smollm2_dir()), max_model_len=1024, engine_process=own_process)
    t1 = time.perf_counter()
    out = backend.generate([f"Count from {i} to {i + 20}." for i in range(prompts)],
                           SamplingConfig(temperature=0.6, max_new_tokens=max_new_tokens))
    t2 = time.perf_counter()
    backend.close()
    print("RESULT " + json.dumps({"start_s": t1 - t0, "generate_s": t2 - t1,
                                  "tokens": sum(c[0].num_tokens for c in out)}), flush=True)


def measure(own_process: bool, args) -> dict:
    cmd = [sys.executable, __file__, "--child", "own" if own_process else "inprocess", f"--prompts={args.prompts}",
           f"--max-new-tokens={args.max_new_tokens}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)  # engine_process wins over the environment
    if proc.returncode != 0:
        sys.exit(f"error: the {'own-process' if own_process else 'in-process'} engine failed: "
                 f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT "):]), process_s=time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--child", choices=["own", "inprocess"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child == "own", args.prompts, args.max_new_tokens)
        return
    runs: dict[str, list[dict]] = {"inprocess": [], "own": []}
    for r in range(args.rounds):
        for mode in ("own", "inprocess") if r % 2 else ("inprocess", "own"):
            runs[mode].append(measure(mode == "own", args))
            print(f"round {r + 1} {mode:9s} " + " ".join(f"{k} {v:.1f}" for k, v in runs[mode][-1].items()),
                  flush=True)
    med = {m: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for m, rs in runs.items()}
    for key in ("start_s", "generate_s", "process_s"):
        print(f"{key:11s} in-process {med['inprocess'][key]:6.1f}  own process {med['own'][key]:6.1f}  "
              f"ratio {med['own'][key] / med['inprocess'][key]:.2f}x")


if __name__ == "__main__":
    main()
