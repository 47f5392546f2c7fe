"""generate-traces throughput: the stage's sampled tokens/s with the vLLM backend vs the same stage with HF generate,
SmolLM2-135M-Instruct (real weights), fp32, side by side in one run.

    .venv/bin/python benchmarks/bench_traces.py [--problems 8] [--samples 4] [--max-new-tokens 512]
        [--batch-size 16] [--threads 2] [--temperature 0.6] [--top-p 1.0]

The generation benchmark's setting (benchmarks/bench_generation.py): the first MATH-500 problems in the
docs/METHOD.md §5 user turn, chat-templated, temperature 0.6, top-p 1.0, a CPU-sized 512-token cap, at most 16
sequences in flight for both (HF ``batch_size``; vLLM ``max_num_seqs``); here 8 problems x 4 samples = 32 sequences,
as bench_generation's 32 prompts. Each backend runs the whole stage (``run_generate_traces``: prompts, sampling,
grading against the MATH-500 answers, keep, write) in its own fresh process pinned to the same number of threads,
after a warm-up stage run on one problem; decontamination is off (MATH-500 problems are evaluation problems) and
model loading is not timed. Prints the stage's generation tokens/s (its summary's ``tokens_per_second``) and the
stage's wall time of each, the kept/dropped counts, and the ratio (target >= 3x). Timings on shared machines are
noisy; the ratio is measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_generation's child runner


def write_problems(path: Path, k: int) -> None:
    from skill_distill.assets import resolve

    rows = [json.loads(line) for line in Path(resolve("asset:bench/math500")).read_text().splitlines()[:k]]
    path.write_text("".join(json.dumps({"id": f"math500-{i}", "problem": r["problem"], "answer": r["answer"]}) + "\n"
                            for i, r in enumerate(rows)))


def child(args) -> None:
    """Run the stage with one backend in this process and print one JSON line."""
    import torch

    from skill_distill.decontamination import DecontaminationConfig
    from skill_distill.generation.base import SamplingConfig
    from skill_distill.generation.factory import HFConfig, VLLMConfig, make_backend
    from skill_distill.traces import run_generate_traces

    torch.set_num_threads(args.threads)
    if args.child == "vllm":
        cfg = VLLMConfig(model="asset:smollm2-135m-instruct", dtype="float32", max_model_len=2048,
                            extra_engine_args={"max_num_seqs": args.batch_size})
    else:
        cfg = HFConfig(model="asset:smollm2-135m-instruct", dtype="float32",
                            batch_size=args.batch_size)
    import skill_distill.traces as stage

    work = Path(args.workdir)
    write_problems(work / "problems.jsonl", args.problems)
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                              n=args.samples, seed=0)
    kw = dict(keep=1, require_think_close=False, decontamination=DecontaminationConfig(enabled=False),
              grader_workers=0, chunk_size=args.problems)
    with make_backend(cfg) as backend:
        stage.make_backend = lambda c: _Unclosed(backend)  # one engine for the warm-up and the timed run
        run_generate_traces(str(work / "problems.jsonl"), str(work / f"warmup-{args.child}"), cfg, limit=1,
                            sampling=SamplingConfig(temperature=0.0, max_new_tokens=8), **kw)
        t0 = time.perf_counter()
        result = run_generate_traces(str(work / "problems.jsonl"), str(work / f"out-{args.child}"), cfg,
                                     sampling=sampling, **kw)
        wall = time.perf_counter() - t0
    print("RESULT " + json.dumps({"tokens": result["tokens_this_run"], "gen_seconds": result[
        "generation_seconds_this_run"], "tokens_per_second": result["tokens_per_second"], "wall_seconds": wall,
        "kept": result["kept"], "dropped": result["dropped"], "samples": result["samples"]}), flush=True)


class _Unclosed:
    """The benchmark's backend handed to both stage runs; closed once by the benchmark."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def run_child(kind: str, args, workdir: str) -> dict:
    from bench_generation import child_result

    cmd = [sys.executable, __file__, "--child", kind, f"--workdir={workdir}"] + [
        f"--{k.replace('_', '-')}={getattr(args, k)}" for k in (
            "problems", "samples", "max_new_tokens", "batch_size", "threads", "temperature", "top_p")]
    return child_result(kind, cmd, args.threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4, help="samples per problem (sampling.n)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["vllm", "hf"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(f"generate-traces, SmolLM2-135M-Instruct fp32, {args.problems} MATH-500 problems x {args.samples} samples, "
          f"temperature {args.temperature}, top-p {args.top_p}, max {args.max_new_tokens} new tokens, batch "
          f"{args.batch_size}, {args.threads} thread(s) each")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_traces.") as workdir:
        for kind in ("vllm", "hf"):  # each printed when it ends: a run stopped during the second keeps the first
            r = results[kind] = run_child(kind, args, workdir)
            dropped = ", ".join(f"{n} {why}" for why, n in r["dropped"].items() if n) or "none"
            print(f"{kind:>4}: {r['tokens_per_second']:7.1f} sampled tokens/s ({r['tokens']} tokens in "
                  f"{r['gen_seconds']:.1f} s of generation; stage {r['wall_seconds']:.1f} s with grading and "
                  f"writing); {r['kept']} kept of {r['samples']} samples, dropped: {dropped}", flush=True)
    ratio = results["vllm"]["tokens_per_second"] / results["hf"]["tokens_per_second"]
    print(f"speed-up of the stage's sampling, vLLM / HF generate: {ratio:.2f}x (target >= 3x)")


if __name__ == "__main__":
    main()
