"""Memory of FSDP2 vs DDP per rank, and resuming vs starting fresh, on the real training stack (CPU, gloo).

    .venv/bin/python benchmarks/bench_memory.py            # the measurements below, then the GPU memory plan
    .venv/bin/python benchmarks/bench_memory.py --plan     # only the per-GPU memory plan of Qwen3-8B/4B
    .venv/bin/python benchmarks/bench_memory.py --plan --tokens 32768 --loss dense   # one length, today's loss

Model: SmolLM2-135M-Instruct (real weights, the quickstart student), 2 ranks, AdamW, fp32 master weights, real
quickstart batches (4 examples per step). Three runs of ``train.py``'s module and data module:
1. DDP, 2 ranks;
2. FSDP2 (ModelParallelStrategy), 2 ranks, fresh start from the HF checkpoint (meta-device build, per-rank slices);
   it saves a distributed checkpoint after 2 steps;
3. FSDP2, 2 ranks, resumed from that checkpoint.
Per rank and run: bytes of the local shards of parameters, gradients and optimizer state (after 2 optimizer
steps), peak RSS, and the time from the start of the worker (after imports) to the end of its first optimizer
step. Printed: FSDP2/DDP state ratio (target <= 0.55) and RSS ratio, resume/fresh time ratio. Timings on a
shared machine are noisy; the ratios are measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STEPS = 2


# ---- the paper-scale plan ---------------------------------------------------------------------------------------
QWEN3 = {
    # https://huggingface.co/Qwen/Qwen3-8B/blob/main/config.json and Qwen3-4B
    "Qwen3-8B": dict(layers=36, hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=12288, vocab=151936,
                     tied=False),
    "Qwen3-4B": dict(layers=36, hidden=2560, heads=32, kv_heads=8, head_dim=128, intermediate=9728, vocab=151936,
                     tied=True),
}
GB = 1e9


def parameter_counts(d: dict) -> dict:
    attn = d["hidden"] * d["heads"] * d["head_dim"] * 2 + d["hidden"] * d["kv_heads"] * d["head_dim"] * 2
    mlp = 3 * d["hidden"] * d["intermediate"]
    norms = 2 * d["hidden"] + 2 * d["head_dim"]  # input/post-attention RMSNorm, q_norm and k_norm
    layer = attn + mlp + norms
    embed = d["vocab"] * d["hidden"]
    root = embed * (1 if d["tied"] else 2) + d["hidden"]  # embeddings (+ lm_head) + final norm
    return {"layer": layer, "root": root, "total": d["layers"] * layer + root}


# rows per chunk of the plan: 1,024 for both models, an upper bound of lm_loss.default_chunk_size (hidden / 4: 1,024
# for 8B, 640 for 4B), kept as a number so the plan needs no torch import
LOSS_CHUNK = 1024


def memory_plan(d: dict, tokens: int = 8192, gpus: int = 8, loss: str = "linear_ce",
                chunk: int = LOSS_CHUNK) -> tuple[dict, list[tuple[str, list[str]]]]:
    """Per-GPU bytes of full fine-tuning with FSDP2: fp32 master weights, gradients and AdamW state sharded over
    ``gpus``; bf16 compute, fp32 gradient reduction; per-layer activation checkpointing; layers resharded after
    forward (the root group, embeddings + lm_head, stays gathered from forward to the end of backward); one
    sequence of ``tokens`` per GPU with every token supervised (the worst case: logits exist only at supervised
    positions). ``loss``: ``linear_ce`` (torch's chunked linear cross-entropy, ``chunk`` positions per chunk, CUDA
    bf16 "compact" policy: an fp32 chunk of logits and its bf16 copy; the lm_head and hidden-state gradients are
    computed in forward and held until backward) or ``dense`` (all supervised logits at once, fp32 upcast).
    Returns the terms (bytes, formula) and the phases of a step with the terms alive in each."""
    p = parameter_counts(d)
    P, h, T, V, L = p["total"], d["hidden"], tokens, d["vocab"], d["layers"]
    i, qd = d["intermediate"], d["heads"] * d["head_dim"]
    terms = {
        "params": (4 * P / gpus, "fp32 parameter shard: 4 P / N"),
        "grads": (4 * P / gpus, "fp32 gradient shard: 4 P / N"),
        "adam": (8 * P / gpus, "AdamW m and v, fp32 shards: 8 P / N"),
        "root": (2 * p["root"], "root group gathered in bf16 (embeddings, lm_head, norm): 2 P_root"),
        "ckpt": (2 * T * h * L, "checkpointed decoder-layer inputs, bf16: 2 T h L"),
        "logits_fwd": (10 * T * V, "logits bf16 + fp32 copy + log-softmax saved for backward: 10 T V"),
        "logits_bwd": (10 * T * V, "log-softmax + logit gradient fp32 + bf16: 10 T V"),
        "lce_chunk": (6 * min(chunk, T) * V, f"one chunk of logits, fp32 + bf16 copy: 6 C V (C = {chunk})"),
        "lce_grads": (2 * V * h + 4 * T * h, "lm_head gradient bf16 + hidden-state gradient fp32, from the "
                      "loss's forward to its backward: 2 V h + 4 T h"),
        "layers": (2 * 2 * p["layer"] + 6 * p["layer"], "2 layers gathered bf16 + 1 layer's bf16 grads and fp32 "
                   "reduce-scatter buffer: 10 P_layer"),
        "recompute": (16 * T * h + 6 * T * i + 4 * T * qd, "one layer's recomputed activations and their "
                      "gradients (flash attention): ~16 T h + 6 T i + 4 T H d"),
        "root_grads": (6 * p["root"], "root gradients bf16 + fp32 reduce-scatter buffer: 6 P_root"),
        "runtime": (5 * GB, "CUDA context, NCCL buffers, allocator slack: ~5 GB (estimate)"),
    }
    if loss == "dense":
        terms = {k: v for k, v in terms.items() if not k.startswith("lce_")}
        at_loss, at_head = ["logits_fwd"], ["logits_bwd"]
    else:
        terms = {k: v for k, v in terms.items() if not k.startswith("logits_")}
        at_loss, at_head = ["lce_chunk", "lce_grads"], ["lce_grads"]
    state = ["params", "grads", "adam", "runtime"]
    phases = [
        ("end of forward (loss)", state + ["root", "ckpt", *at_loss]),
        ("lm_head backward", state + ["root", "ckpt", *at_head]),
        ("decoder-layer backward", state + ["root", "ckpt", "layers", "recompute"]),
        ("embedding gradient reduce-scatter", state + ["root", "root_grads"]),
        ("between steps", state),
    ]
    return terms, phases


def plan_peak(d: dict, tokens: int, gpus: int = 8, loss: str = "linear_ce") -> float:
    terms, phases = memory_plan(d, tokens, gpus, loss)
    return max(sum(terms[k][0] for k in alive) for _, alive in phases)


def print_plan(lengths: tuple[int, ...] = (8192, 16384, 32768), gpus: int = 8, gpu_gb: float = 80.0,
               loss: str = "linear_ce") -> None:
    for tokens in lengths:
        print_plan_at(tokens, gpus, gpu_gb, loss)
    print(f"\nPeak per GPU ({gpus} x {gpu_gb:.0f} GB), chunked loss (linear_ce) vs today's dense loss:")
    for name, d in QWEN3.items():
        for tokens in lengths:
            new, old = plan_peak(d, tokens, gpus, "linear_ce"), plan_peak(d, tokens, gpus, "dense")
            print(f"  {name} at {tokens:>6}: {new / GB:5.1f} GB ({'fits' if new / GB <= gpu_gb else 'DOES NOT FIT'})"
                  f" vs dense {old / GB:5.1f} GB ({'fits' if old / GB <= gpu_gb else 'does not fit'})")


def print_plan_at(tokens: int = 8192, gpus: int = 8, gpu_gb: float = 80.0, loss: str = "linear_ce") -> None:
    for name, d in QWEN3.items():
        p = parameter_counts(d)
        terms, phases = memory_plan(d, tokens, gpus, loss)
        print(f"\n{name}: {d['layers']} layers, hidden {d['hidden']}, {d['heads']} q / {d['kv_heads']} kv heads x "
              f"{d['head_dim']}, intermediate {d['intermediate']}, vocab {d['vocab']}, "
              f"{'tied' if d['tied'] else 'untied'} embeddings -> P = {p['total'] / 1e9:.3f} B "
              f"(P_layer {p['layer'] / 1e6:.1f} M, P_root {p['root'] / 1e6:.1f} M); T = {tokens}, N = {gpus} GPUs, "
              f"loss {loss}")
        for value, formula in terms.values():
            print(f"  {value / GB:7.2f} GB  {formula}")
        for phase, alive in phases:
            total = sum(terms[k][0] for k in alive)
            print(f"  = {total / GB:6.2f} GB in use at: {phase}")
        peak = max(sum(terms[k][0] for k in alive) for _, alive in phases)
        between = sum(terms[k][0] for k in phases[-1][1])
        kv = 2 * d["layers"] * d["kv_heads"] * d["head_dim"] * 2
        engine_gb = gpu_gb - between / GB
        cache_gb = engine_gb - 2 * p["total"] / GB
        print(f"  peak {peak / GB:.1f} GB of {gpu_gb:.0f} GB (headroom {gpu_gb - peak / GB:.1f} GB); between steps "
              f"{engine_gb:.1f} GB are free for an evaluation engine: bf16 weights {2 * p['total'] / GB:.1f} GB + "
              f"KV cache {cache_gb:.1f} GB at {kv // 1024} KiB/token = {cache_gb * GB / kv / 1e3:.0f}K tokens")


# ---- the measured runs ------------------------------------------------------------------------------------------
def worker(args) -> None:
    start = time.perf_counter()
    import lightning as L
    import torch

    from callbacks.checkpointing import ResumableCheckpoint
    from datamodules import SkillDataModule
    from lightning_modules import CausalLMModule
    from skill_distill.assets import smollm2_dir
    from skill_distill.run_layout import RunLayout

    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)

    class Probe(L.Callback):
        first_step_s = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.first_step_s is None:
                self.first_step_s = time.perf_counter() - start
            if trainer.global_step < args.measure_at:
                return

            def local_bytes(t):
                t = t.to_local() if hasattr(t, "to_local") else t
                return t.numel() * t.element_size()

            params = list(pl_module.model.parameters())
            opt = trainer.optimizers[0]
            row = {
                "rank": trainer.global_rank,
                "params": sum(local_bytes(p) for p in params),
                "grads": sum(local_bytes(p.grad) for p in params if p.grad is not None),
                "optimizer": sum(local_bytes(v) for s in opt.state.values() for v in s.values()
                                 if isinstance(v, torch.Tensor) and v.dim() > 0),
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "first_step_s": self.first_step_s,
            }
            with open(Path(args.out) / f"{args.name}.rank{trainer.global_rank}.json", "w") as f:
                json.dump(row, f)
            trainer.should_stop = True

    model = CausalLMModule(model=str(smollm2_dir()), attn_implementation="sdpa", fsdp_mixed_precision=False,
                           learning_rate=1e-5, max_grad_norm=1.0)
    data = SkillDataModule(corpus=str(REPO / "data/quickstart/pool.jsonl"), tokenizer=str(smollm2_dir()),
                           max_length=256, examples_per_step=4, seed=0, run_dir=args.run_dir)
    if args.strategy == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    else:
        strategy = "ddp"
    callbacks = [Probe()]
    if args.strategy == "fsdp2":
        callbacks.append(ResumableCheckpoint(every_n_train_steps=STEPS, keep_last=1, save_on_epoch_end=False))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=args.max_steps, precision="32-true",
                        use_distributed_sampler=False, default_root_dir=args.run_dir, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=callbacks)
    # the link train.py resolves --ckpt_path last to (Lightning's own "last" lookup knows only ModelCheckpoint)
    resume = RunLayout.of(trainer).last_checkpoint if args.resume else None
    trainer.fit(model, datamodule=data, ckpt_path=resume)


def launch(name: str, out: Path, run_dir: Path, strategy: str, resume: bool = False, measure_at: int = STEPS,
           max_steps: int = STEPS) -> tuple[dict, float]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, __file__, "--worker", "--name", name, "--out", str(out), "--run_dir", str(run_dir),
           "--strategy", strategy, "--measure_at", str(measure_at), "--max_steps", str(max_steps)]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ, PYTHONPATH=str(REPO), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    rows = [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in (0, 1)]
    return {"rows": rows}, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plan", action="store_true", help="print the GPU memory plan only")
    ap.add_argument("--tokens", type=int, nargs="*", default=[8192, 16384, 32768], help="plan lengths")
    ap.add_argument("--loss", default="linear_ce", choices=["linear_ce", "dense"], help="plan loss")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name")
    ap.add_argument("--out")
    ap.add_argument("--run_dir")
    ap.add_argument("--strategy", default="fsdp2")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--measure_at", type=int, default=STEPS)
    ap.add_argument("--max_steps", type=int, default=STEPS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.plan:
        return print_plan(tuple(args.tokens), loss=args.loss)

    with tempfile.TemporaryDirectory(prefix="bench_memory.") as tmp:
        out = Path(tmp)
        ddp, _ = launch("ddp", out, out / "ddp_run", "ddp")
        fresh, fresh_wall = launch("fsdp2_fresh", out, out / "fsdp_run", "fsdp2")
        ckpt = out / "fsdp_run" / "checkpoints" / "last.ckpt"
        ckpt_bytes = sum(f.stat().st_size for f in ckpt.resolve().iterdir())
        resumed, resumed_wall = launch("fsdp2_resumed", out, out / "fsdp_run", "fsdp2", resume=True,
                                       measure_at=STEPS + 1, max_steps=STEPS + 1)

    def per_rank(run, key):
        return max(r[key] for r in run["rows"])

    def states(run):
        return max(r["params"] + r["grads"] + r["optimizer"] for r in run["rows"])

    print("SmolLM2-135M, 2 ranks on CPU (gloo), AdamW, fp32 master weights; per rank (max over ranks):")
    print(f"{'':<16}{'params MB':>10}{'grads MB':>10}{'optim MB':>10}{'states MB':>11}{'peak RSS MB':>13}"
          f"{'1st step s':>12}")
    for name, run in (("DDP", ddp), ("FSDP2 fresh", fresh), ("FSDP2 resumed", resumed)):
        print(f"{name:<16}{per_rank(run, 'params') / 1e6:>10.1f}{per_rank(run, 'grads') / 1e6:>10.1f}"
              f"{per_rank(run, 'optimizer') / 1e6:>10.1f}{states(run) / 1e6:>11.1f}"
              f"{per_rank(run, 'peak_rss') / 1e6:>13.1f}{per_rank(run, 'first_step_s'):>12.1f}")
    print(f"FSDP2/DDP per-rank parameters+gradients+optimizer state: {states(fresh) / states(ddp):.3f}x "
          "(target <= 0.55)")
    print(f"FSDP2/DDP peak RSS per rank: {per_rank(fresh, 'peak_rss') / per_rank(ddp, 'peak_rss'):.3f}x "
          "(includes the Python/torch/transformers runtime, the same in both)")
    print(f"resume/fresh time to the end of the first optimizer step: "
          f"{per_rank(resumed, 'first_step_s') / per_rank(fresh, 'first_step_s'):.2f}x "
          f"({per_rank(resumed, 'first_step_s'):.1f} s vs {per_rank(fresh, 'first_step_s'):.1f} s; "
          f"checkpoint {ckpt_bytes / 1e6:.0f} MB; whole runs {resumed_wall:.0f} s vs {fresh_wall:.0f} s)")
    print("\nPer-GPU memory plan (arithmetic, see docs/SCALING.md):")
    print_plan()


if __name__ == "__main__":
    main()
