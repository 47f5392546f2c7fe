"""Long teacher traces: the chunked loss (``linear_ce``) against today's dense loss, and our step's overhead.

    nice .venv/bin/python benchmarks/bench_long_traces.py                     # everything below
    nice .venv/bin/python benchmarks/bench_long_traces.py --only memory       # or speed, overhead

Model: Qwen3 architecture at Qwen3-0.6B's width (hidden 1,024, 16 q / 8 kv heads x 128, intermediate 3,072), 4
layers, tied embeddings, the real 151,936-token vocabulary, random init, fp32 weights and fp32 AdamW; attention
``sdpa_packed``; one packed row of sequences of 1,024 tokens, every position supervised; random token ids.

1. memory: one training step (forward, backward, AdamW step) in a fresh process per measurement, so every peak is
   its own: peak RSS (ru_maxrss) minus the RSS once the AdamW state exists (a first step on zero gradients creates
   it, then the gradients are freed). Short lengths are not used for the lines below: there the gradients and the
   AdamW step's temporaries, the same for both losses, set the peak. glibc is told to map every large buffer on
   its own (MALLOC_MMAP_THRESHOLD_), so freed tensors leave the RSS and the two arms are measured alike.
   Lengths: 2,048 to 4,096 supervised tokens for both losses, plus 8,192 for linear_ce; a run whose estimated need
   (a line through
   the arm's earlier points) exceeds what the machine has free, or 11 GB, is skipped and said so (results are
   appended to ``--results`` and reused by a rerun). Printed: new/today's ratio at 4,096 (target <= 0.35x; a
   skipped point is extrapolated along the line, and said so), and each loss's longest length within 20 GB,
   extrapolated along that line (this machine's 24 GB of RAM, shared, cannot hold a 20 GB measurement).
   Each memory run's step time gives the whole step's supervised tokens/s, dense and linear_ce alternating per
   length.
2. speed: the loss alone (lm_head + cross-entropy, forward and backward) on the same 2,048 hidden states, in one
   process, arms alternated 3 times (dense; linear_ce, lm_loss's wrapper of torch's chunked op, at the default
   chunk of hidden / 4 = 256 rows and at 1,024; torch's public F.linear_cross_entropy at 256 rows and with torch's
   own chunk heuristic): supervised tokens/s and the ratio to dense (target >= 0.9x). The three GEMMs (logits,
   input gradient, weight gradient: 2 T V H flops each) are the same in every arm.
3. overhead: our training step (Lightning Trainer, CausalLMModule, StepBatchSampler + SFTCollator through a
   DataLoader) against a bare loop of the same model's forward, the same loss, backward, clipping and AdamW step on
   the same packed tokens (no Lightning, no data loading); 5 runs alternated, each timing optimizer steps 2 and 3
   of 3; median per-step time ratio (target <= +10%). The overhead is per step, so this uses a narrower model
   (hidden 256, 2 layers, the same vocabulary) to afford the runs on this machine.
The machine is shared (2 cores, other jobs): ratios are measured side by side in one run; absolute times are
pessimistic.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=4,
             num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
             max_position_embeddings=40960)
SEQUENCE = 1024
GB = 1e9
BUDGET = 20 * GB


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def build(loss: str, chunk: int | None = None):
    import torch

    from lightning_modules import CausalLMModule

    torch.manual_seed(0)
    module = CausalLMModule(model_config=MODEL, attn_implementation="sdpa_packed", loss_implementation=loss,
                            **({"loss_chunk_size": chunk} if chunk else {}))
    module.configure_model()
    return module


def examples(tokens: int, seed: int = 0, vocab: int = MODEL["vocab_size"]):
    import numpy as np

    from datamodules.batching import TokenizedExample

    rng = np.random.default_rng(seed)
    out = []
    for i in range(max(tokens // SEQUENCE, 1)):
        n = min(SEQUENCE, tokens)
        ids = rng.integers(0, vocab, n + 1).tolist()
        out.append(TokenizedExample(f"x{i}", ids[:n], ids[1:]))  # every position supervised
    return out


def packed(tokens: int, seed: int = 0) -> dict:
    from datamodules.batching import SFTCollator

    return SFTCollator(pad_token_id=0, packing=True)([(e, None) for e in examples(tokens, seed)])


def one_step(module, optimizer, batch, ce_fn=None) -> int:
    import torch

    ce, n = (ce_fn or module.forward_ce)(batch)
    (ce / n).backward()
    torch.nn.utils.clip_grad_norm_(module.model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return int(n)


def adamw(module):
    import torch

    return torch.optim.AdamW(module.model.parameters(), lr=1e-5)


# ---- workers (one process each) ----------------------------------------------------------------------------------
def memory_worker(args) -> dict:
    import torch

    torch.set_num_threads(2)
    module = build(args.loss, args.chunk)
    optimizer = adamw(module)
    for p in module.model.parameters():  # create the AdamW state (m, v) without a real step
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    batch = packed(args.tokens)
    base = rss_now()
    t0 = time.perf_counter()
    n = one_step(module, optimizer, batch)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"loss": args.loss, "tokens": n, "base_rss": base, "peak_rss": peak, "step_bytes": peak - base,
            "seconds": seconds}


def speed_worker(args) -> dict:
    """The loss alone (lm_head + cross-entropy, forward and backward) on the same hidden states, arms alternated."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(2)
    torch.manual_seed(0)
    from lightning_modules.lm_loss import _ChunkedLinearCE, default_chunk_size

    hidden = torch.randn(args.tokens, MODEL["hidden_size"], requires_grad=True)
    weight = (0.02 * torch.randn(MODEL["vocab_size"], MODEL["hidden_size"])).requires_grad_()
    target = torch.randint(0, MODEL["vocab_size"], (args.tokens,))
    rows = default_chunk_size(MODEL["hidden_size"])
    # torch's public path, the same op: with our chunk size, and with torch's own chunk heuristic
    options = {f"torch_F_{rows}": torch.nn.LinearCrossEntropyOptions(batch_chunk_size=rows, chunking_method=None),
               "torch_F_heuristic": torch.nn.LinearCrossEntropyOptions()}

    def dense():
        return F.cross_entropy(F.linear(hidden, weight).float(), target, reduction="sum")

    arms = {"dense": dense,
            **{f"linear_ce_{c}": (lambda c=c: _ChunkedLinearCE.apply(hidden, weight, target, None, c))
               for c in (rows, 4 * rows)},
            **{name: (lambda o=o: F.linear_cross_entropy(hidden, weight, target, reduction="sum", options=o))
               for name, o in options.items()}}
    arms = {name: fn for name, fn in arms.items() if any(name.startswith(a) for a in args.arms)}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for rep in range(args.reps):
        for name, fn in (arms.items() if rep % 2 == 0 else reversed(arms.items())):
            hidden.grad = weight.grad = None
            t0 = time.perf_counter()
            fn().backward()
            times[name].append(time.perf_counter() - t0)
    return {"tokens": args.tokens, "times": times}


def overhead_worker(args) -> dict:
    import lightning as L
    import torch

    from datamodules.batching import ExampleDataset, SFTCollator, StepBatchSampler

    torch.set_num_threads(2)
    exs = examples(args.tokens * 3, vocab=args.overhead_vocab)
    small = dict(MODEL, hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=64, num_hidden_layers=2, vocab_size=args.overhead_vocab)  # per-step overhead: a smaller
    # model affords more runs, and a smaller step makes the fixed per-step cost a larger share (pessimistic)

    def build(loss):
        import torch

        from lightning_modules import CausalLMModule

        torch.manual_seed(0)
        module = CausalLMModule(model_config=small, attn_implementation="sdpa_packed", loss_implementation=loss)
        module.configure_model()
        return module

    per_step = max(len(exs) // 3, 1)

    def ours() -> list[float]:
        module = build("linear_ce")
        stamps = []

        class Clock(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                stamps.append(time.perf_counter())

        sampler = StepBatchSampler([len(e.input_ids) for e in exs], [e.num_supervised for e in exs], per_step, 1, 0,
                                   1, shuffle=False)
        loader = torch.utils.data.DataLoader(ExampleDataset(exs), batch_sampler=sampler,
                                             collate_fn=SFTCollator(pad_token_id=0, packing=True))
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                            callbacks=[Clock()])
        trainer.fit(module, train_dataloaders=loader)
        del trainer, module
        gc.collect()
        return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]

    def bare() -> list[float]:
        module = build("linear_ce")
        model, opt = module.model, adamw(module)
        collate = SFTCollator(pad_token_id=0, packing=True)
        batches = [collate([(e, None) for e in exs[s * per_step:(s + 1) * per_step]]) for s in range(3)]
        stamps = []
        for batch in batches:  # the model's own forward and loss, backward, clipping, AdamW: nothing else
            ce, n = model.supervised_ce(batch["input_ids"], batch["labels"], implementation="linear_ce",
                                        position_ids=batch["position_ids"], cu_seq_lens_q=batch["cu_seq_lens_q"],
                                        cu_seq_lens_k=batch["cu_seq_lens_k"], max_length_q=batch["max_length_q"],
                                        max_length_k=batch["max_length_k"])
            (ce / n).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            stamps.append(time.perf_counter())
        del model, opt, module
        gc.collect()
        return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]

    runs = []
    for rep in range(args.reps):
        order = [("ours", ours), ("bare", bare)] if rep % 2 == 0 else [("bare", bare), ("ours", ours)]
        row = {name: fn() for name, fn in order}
        runs.append(row)
        print(json.dumps({"overhead_run": rep, **row}), file=sys.stderr, flush=True)
    return {"tokens_per_step": per_step * SEQUENCE, "runs": runs}


WORKERS = {"memory": memory_worker, "speed": speed_worker, "overhead": overhead_worker}


def spawn(kind: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", *map(str, v if isinstance(v, list) else [v])]
    env = dict(os.environ, PYTHONPATH=str(REPO), MALLOC_MMAP_THRESHOLD_="65536", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} {kw} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def line_through(points: list[tuple[int, int]]) -> tuple[float, float]:
    """Least-squares (intercept, bytes per token) through (tokens, bytes) points."""
    from scipy.stats import linregress

    if len(points) < 2:
        return float(points[0][1]), 0.0
    fit = linregress([t for t, _ in points], [b for _, b in points])
    return fit.intercept, fit.slope


REAL_USE_CAP = 11 * GB  # the machine (24 GB) is shared: no measurement process may grow past this


def run_memory(results: Path, dense_lengths: list[int], lce_lengths: list[int]) -> None:
    """Measurements are appended to ``results`` (JSON lines) as they finish; a rerun reuses them."""
    measured: dict[str, dict[int, dict]] = {"dense": {}, "linear_ce": {}}
    if results.exists():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            measured[r["loss"]][r["tokens"]] = r
    plan = {"dense": dense_lengths, "linear_ce": lce_lengths}
    for tokens in sorted({t for ts in plan.values() for t in ts}):
        for loss in ("dense", "linear_ce"):
            if tokens not in plan[loss]:
                continue
            if tokens in measured[loss]:
                r = measured[loss][tokens]
                print(f"  {loss:<10} {tokens:>6} tokens: step peak - state = {r['step_bytes'] / GB:6.2f} GB "
                      f"(state RSS {r['base_rss'] / GB:.2f} GB, step {r['seconds']:.0f} s) [from {results.name}]")
                continue
            points = [(t, r["step_bytes"]) for t, r in measured[loss].items()]
            base = max((r["base_rss"] for r in measured[loss].values()), default=4 * GB)
            if len(points) >= 2:
                a, b = line_through(points)
                need = base + a + b * tokens
                if need > min(mem_available() - 2 * GB, REAL_USE_CAP):
                    print(f"  {loss} at {tokens}: skipped, would need ~{need / GB:.1f} GB of real memory "
                          f"(cap {REAL_USE_CAP / GB:.0f} GB, {mem_available() / GB:.1f} GB free)")
                    continue
            r = spawn("memory", loss=loss, tokens=tokens)
            measured[loss][tokens] = r
            with results.open("a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"  {loss:<10} {tokens:>6} tokens: step peak - state = {r['step_bytes'] / GB:6.2f} GB "
                  f"(state RSS {r['base_rss'] / GB:.2f} GB, step {r['seconds']:.0f} s)", flush=True)
    # the lines go through this run's lengths only (a results file may hold shorter ones, where the peak bends)
    measured = {loss: {t: r for t, r in rows.items() if t in plan[loss]} for loss, rows in measured.items()}
    fits = {loss: line_through([(t, r["step_bytes"]) for t, r in rows.items()]) for loss, rows in measured.items()
            if len(rows) >= 2}
    for loss, (a, b) in fits.items():
        print(f"{loss}: {b / 1e6:.3f} MB per supervised token + {a / GB:.2f} GB (line through "
              f"{sorted(measured[loss])}); longest length whose step fits in 20 GB, extrapolated: "
              f"{(BUDGET - a) / b:,.0f} tokens")

    def at(loss: str, tokens: int) -> tuple[float, str]:
        if tokens in measured[loss]:
            return measured[loss][tokens]["step_bytes"], "measured"
        a, b = fits[loss]
        return a + b * tokens, "extrapolated"

    if {"dense", "linear_ce"} <= set(fits):
        (new, how_new), (old, how_old) = at("linear_ce", 4096), at("dense", 4096)
        print(f"memory of one step at 4,096 supervised tokens, linear_ce ({how_new}) / dense ({how_old}): "
              f"{new / old:.3f}x (target <= 0.35x)")
        a, b = fits["dense"]
        longest = (BUDGET - a) / b
        print(f"at dense's longest 20-GB length ({longest:,.0f} tokens, extrapolated) linear_ce needs "
              f"{at('linear_ce', round(longest))[0] / GB:.2f} GB: {at('linear_ce', round(longest))[0] / BUDGET:.3f}x")
    for tokens in sorted(set(measured["dense"]) & set(measured["linear_ce"])):
        d, c = measured["dense"][tokens]["seconds"], measured["linear_ce"][tokens]["seconds"]
        print(f"whole step at {tokens} tokens: {tokens / d:.1f} (dense) vs {tokens / c:.1f} (linear_ce) supervised "
              f"tokens/s: {d / c:.3f}x (one step each, first step of a fresh process)")


def run_speed(tokens: int, reps: int, arms: list[str]) -> None:
    r = spawn("speed", tokens=tokens, reps=reps, arms=arms)
    med = {name: statistics.median(ts) for name, ts in r["times"].items()}
    for name, m in med.items():
        print(f"  {name:<26} {r['tokens'] / m:8.1f} supervised tokens/s (median of {len(r['times'][name])} "
              f"{[round(t, 1) for t in r['times'][name]]} s)")
    for name in med:
        if name != "dense":
            print(f"loss forward + backward at {r['tokens']} tokens (hidden 1,024, vocab 151,936), tokens/s {name} / "
                  f"dense: {med['dense'] / med[name]:.3f}x (target >= 0.9x)")


def run_overhead(vocab: int, runs: int) -> None:
    r = spawn("overhead", tokens=1024, overhead_vocab=vocab, reps=runs)
    ratios = [statistics.median(run["ours"]) / statistics.median(run["bare"]) for run in r["runs"]]
    for i, run in enumerate(r["runs"]):
        print(f"  run {i}: ours {[round(t, 2) for t in run['ours']]} s/step, bare {[round(t, 2) for t in run['bare']]}"
              f" s/step -> {ratios[i]:.3f}x")
    print(f"our training step / bare loop, {r['tokens_per_step']} packed tokens per step (hidden 256, 2 layers, vocab "
          f"{vocab:,}): median of {len(ratios)} alternated runs "
          f"{statistics.median(ratios):.3f}x, overhead {100 * (statistics.median(ratios) - 1):+.1f}% (target <= +10%)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["memory", "speed", "overhead"])
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--loss", default="linear_ce")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=None, help="linear_ce rows per chunk (default: the module's)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--speed-tokens", type=int, default=2048)
    ap.add_argument("--overhead-vocab", type=int, default=MODEL["vocab_size"],
                    help="vocabulary of the overhead arm's model (smaller: faster runs on a loaded machine)")
    ap.add_argument("--overhead-runs", type=int, default=5)
    ap.add_argument("--arms", nargs="*", default=["dense", "linear_ce", "torch_F"],
                    help="speed arms (name prefixes): dense, linear_ce (ours, default chunk and 4x), torch_F "
                         "(F.linear_cross_entropy at our chunk and with torch's heuristic)")
    ap.add_argument("--results", type=Path, default=Path(tempfile.gettempdir()) / "bench_long_traces.memory.jsonl",
                    help="memory measurements, appended as they finish and reused by a rerun")
    # below ~2,048 tokens the AdamW step's temporaries, not the loss, set the peak (measured: dense 2.17 GB at 512,
    # 2.44 GB at 1,024), which bends the line; dense at 4,096 needs about 12 GB of real memory
    ap.add_argument("--dense-lengths", type=int, nargs="*", default=[2048, 3072, 4096])
    ap.add_argument("--lce-lengths", type=int, nargs="*", default=[2048, 4096, 8192])
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    print(f"bench_long_traces {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs, "
          f"{mem_available() / GB:.1f} GB free; model {MODEL}")
    runs = {"memory": lambda: run_memory(args.results, args.dense_lengths, args.lce_lengths),
            "speed": lambda: run_speed(args.speed_tokens, args.reps, args.arms),
            "overhead": lambda: run_overhead(args.overhead_vocab, args.overhead_runs)}
    for kind, fn in runs.items():
        if args.only in (None, kind):
            print(f"\n[{kind}]", flush=True)
            fn()


if __name__ == "__main__":
    main()
