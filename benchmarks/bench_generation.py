"""Generation throughput: the vLLM backend vs the HF backend on SmolLM2-135M-Instruct (real weights).

    .venv/bin/python benchmarks/bench_generation.py [--prompts 32] [--max-new-tokens 128] [--batch-size 16]
        [--threads 1] [--vllm-dtype auto] [--vllm-compile]

Same prompts (the first MATH-500 problems in the METHOD.md §5 user turn, chat-templated), same maximum of new
tokens, greedy decoding, 16 sequences at a time for both (HF ``batch_size``; vLLM ``max_num_seqs``). HF runs in
float32 (bf16 generate is pathologically slow on this CPU); vLLM in the model's dtype unless ``--vllm-dtype``.
Each backend runs in its own fresh process pinned to the same number of threads, after a warm-up call; model
loading is not timed. Prints generated tokens/s of each, the ratio (target >= 3x) and how many greedy outputs
agree. Timings on shared machines are noisy; the ratio is measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED = Path(os.environ.get("SKILL_DISTILL_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def prompts(k: int) -> list[str]:
    from transformers import AutoTokenizer

    from skill_distill.assets import smollm2_dir
    from skill_distill.formatting import render_prompt, user_message

    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    rows = [json.loads(line) for line in (SHARED / "data/benchmarks/math500/test.jsonl").read_text().splitlines()]
    return [render_prompt(tok, user_message(r["problem"])) for r in rows[:k]]


def child(args) -> None:
    """Time one backend in this process and print one JSON line."""
    import torch

    from skill_distill.generation.base import SamplingConfig
    from skill_distill.generation.factory import BackendConfig, make_backend

    torch.set_num_threads(args.threads)
    if args.child == "vllm":
        cfg = BackendConfig(kind="vllm", model="asset:smollm2-135m-instruct", dtype=args.vllm_dtype,
                            max_model_len=2048, enforce_eager=not args.vllm_compile,
                            extra_engine_args={"max_num_seqs": args.batch_size})
    else:
        cfg = BackendConfig(kind="hf", model="asset:smollm2-135m-instruct", dtype="float32",
                            batch_size=args.batch_size)
    texts = prompts(args.prompts)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=args.max_new_tokens)
    with make_backend(cfg) as backend:
        backend.generate(texts[:2], SamplingConfig(temperature=0.0, max_new_tokens=8))  # warm-up
        t0 = time.perf_counter()
        out = backend.generate(texts, sampling)
        elapsed = time.perf_counter() - t0
    print("RESULT " + json.dumps({"seconds": elapsed, "tokens": sum(c[0].num_tokens for c in out),
                                  "texts": [c[0].text for c in out]}), flush=True)


def run_child(kind: str, args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), VLLM_ENABLE_V1_MULTIPROCESSING="0",
               VLLM_CPU_OMP_THREADS_BIND=",".join(str(i) for i in range(args.threads)),
               VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"), TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, __file__, "--child", kind] + [f"--{k.replace('_', '-')}={v}" for k, v in (
        ("prompts", args.prompts), ("max_new_tokens", args.max_new_tokens), ("batch_size", args.batch_size),
        ("threads", args.threads), ("vllm_dtype", args.vllm_dtype))] + (["--vllm-compile"] if args.vllm_compile else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"{kind} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--vllm-dtype", default="auto")
    parser.add_argument("--vllm-compile", action="store_true",
                        help="let vLLM compile the model (torch.compile) instead of running eagerly, the CPU default")
    parser.add_argument("--child", choices=["vllm", "hf"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(f"SmolLM2-135M-Instruct, {args.prompts} prompts, greedy, max {args.max_new_tokens} new tokens, "
          f"batch {args.batch_size}, {args.threads} thread(s) each, vLLM {'compiled' if args.vllm_compile else 'eager'}")
    results = {kind: run_child(kind, args) for kind in ("vllm", "hf")}
    for kind, r in results.items():
        dtype = "float32" if kind == "hf" else args.vllm_dtype
        print(f"{kind:>4} ({dtype}): {r['tokens'] / r['seconds']:8.1f} tokens/s  ({r['tokens']} tokens in "
              f"{r['seconds']:.1f} s)")
    v, h = results["vllm"], results["hf"]
    ratio = (v["tokens"] / v["seconds"]) / (h["tokens"] / h["seconds"])
    same = sum(a == b for a, b in zip(v["texts"], h["texts"]))
    print(f"speed-up vLLM / HF: {ratio:.2f}x (target >= 3x); identical greedy outputs: {same}/{len(v['texts'])}")


if __name__ == "__main__":
    main()
