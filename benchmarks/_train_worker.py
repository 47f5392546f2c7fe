"""One training run of the training-throughput benchmark, in its own process (so its peak RSS is its own).

    .venv/bin/python benchmarks/_train_worker.py --kind {ours,hf_padded,hf_flat} --out result.json [options]

Started by ``benchmarks/bench_training.py``; the options are the same there and here. Kinds:
- ``ours``: CausalLMModule + StepBatchSampler / SFTCollator(packing=True) / StatefulDataLoader through a Lightning
  Trainer (one packed micro-batch of all the step's examples);
- ``hf_padded``: transformers.Trainer with right-padded batches (labels -100 on padding);
- ``hf_flat``: transformers.Trainer with its padding-free ``DataCollatorWithFlattening`` (one packed row).

All three see the same synthetic examples in the same order (``synthetic_examples``), the same model config and
initialisation seed, the same optimizer (torch's fused AdamW, both frameworks' default), LR schedule (cosine, 10%
linear warmup), clipping and precision.
The result JSON holds, per optimizer step, wall time, process CPU time, supervised/real/padded token counts and the
loss, plus totals over the timed steps and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skill_distill.io import write_json

IGNORE_INDEX = -100  # the value datamodules.batching uses and HF losses ignore
KINDS = ("ours", "hf_padded", "hf_flat")


def add_common_args(parser: argparse.ArgumentParser) -> list[str]:
    """Options shared by the driver and the worker (the driver forwards them unchanged); returns their dests."""
    before = len(parser._actions)
    parser.add_argument("--warmup-steps", type=int, default=2, help="optimizer steps run but not timed")
    parser.add_argument("--steps", type=int, default=16, help="timed optimizer steps")
    parser.add_argument("--examples-per-step", type=int, default=8)
    parser.add_argument("--median-length", type=float, default=400.0, help="median example length (tokens)")
    parser.add_argument("--sigma", type=float, default=1.0, help="sigma of the lognormal length distribution")
    parser.add_argument("--min-length", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=2048, help="cap on example length (tokens)")
    parser.add_argument("--prompt-share", type=float, default=0.1, help="unsupervised prompt share of each example")
    parser.add_argument("--vocab-size", type=int, default=20000)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--intermediate-size", type=int, default=768)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--precision", choices=("bf16-mixed", "32-true"), default="bf16-mixed")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each run")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    return [a.dest for a in parser._actions[before:]]


def model_config(args) -> dict:
    return {"model_type": "qwen3", "vocab_size": args.vocab_size, "hidden_size": args.hidden_size,
            "intermediate_size": args.intermediate_size, "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads, "head_dim": args.head_dim,
            "max_position_embeddings": max(4096, args.max_length), "use_cache": False}


def synthetic_examples(args) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids) per example, in training order: lognormal total lengths (a long tail like reasoning
    traces) capped at ``max_length``, the first ``prompt_share`` unsupervised, token ids uniform in the vocabulary."""
    n = (args.warmup_steps + args.steps) * args.examples_per_step
    rng = np.random.default_rng(args.seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(args.median_length), args.sigma, n)),
                      args.min_length, args.max_length).astype(int)
    out = []
    for length in lengths:
        ids = rng.integers(0, args.vocab_size, int(length)).tolist()
        prompt = max(1, int(round(args.prompt_share * length)))
        out.append((ids[:prompt], ids[prompt:]))
    return out


def rss_now_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Gate:
    """Lockstep with the driver: before each timed stretch the worker waits for a go byte, after each optimizer step
    it sends a done byte. The driver lets one run at a time do one step, round-robin, so the three runs see the same
    machine state step by step. Without file descriptors (a standalone run) it does nothing."""

    def __init__(self, go_fd: int | None, done_fd: int | None):
        self.go_fd, self.done_fd = go_fd, done_fd

    def wait(self) -> None:
        if self.go_fd is not None and os.read(self.go_fd, 1) != b"g":
            raise SystemExit("driver closed the go pipe")

    def done(self) -> None:
        if self.done_fd is not None:
            os.write(self.done_fd, b"d")


class StepClock:
    """Per optimizer step: wall and CPU time, and token counts; the framework callbacks below feed it.

    A step's time runs from the moment the worker is let go after the previous step (or, for the first step, from its
    start) to the end of its optimizer step, so it includes the framework's work between steps (logging, fetching and
    collating the next batch) but never the time spent waiting for the other runs."""

    def __init__(self, warmup: int, total: int, gate: Gate):
        self.warmup, self.total, self.gate = warmup, total, gate
        self.steps: list[dict] = []
        self.rss_train_start_mb: float | None = None
        self._resume: tuple[float, float] | None = None

    def begin(self, counts: dict) -> None:
        if self._resume is None:  # first step: nothing measured before it
            self.gate.wait()
            self._resume = time.perf_counter(), time.process_time()
        start, cpu_start = self._resume
        self.steps.append({"start": start, "cpu_start": cpu_start, "loss": None, **counts})

    def end(self) -> None:
        step = self.steps[-1]
        step["end"], step["cpu_end"] = time.perf_counter(), time.process_time()
        self.gate.done()
        if len(self.steps) < self.total:
            self.gate.wait()
            self._resume = time.perf_counter(), time.process_time()

    def summary(self) -> dict:
        timed = self.steps[self.warmup:]
        if not timed:
            raise RuntimeError(f"only {len(self.steps)} steps ran; none after {self.warmup} warm-up steps")
        wall = sum(s["end"] - s["start"] for s in timed)
        cpu = sum(s["cpu_end"] - s["cpu_start"] for s in timed)
        tot = {k: sum(s[k] for s in timed) for k in ("supervised", "real", "positions")}
        return {"timed_steps": len(timed), "wall_s": wall, "cpu_s": cpu, **{f"{k}_tokens": v for k, v in tot.items()},
                "supervised_tokens_per_s": tot["supervised"] / wall,
                "pad_share": 1 - tot["real"] / tot["positions"],
                "step_wall_s": [s["end"] - s["start"] for s in timed],
                "step_cpu_s": [s["cpu_end"] - s["cpu_start"] for s in timed],
                "step_supervised": [s["supervised"] for s in self.steps],
                "losses": [s["loss"] for s in self.steps],
                "rss_train_start_mb": self.rss_train_start_mb}


# ---- ours: the project's Lightning training core --------------------------------------------------------------
def run_ours(args, examples, clock: StepClock, scratch: str) -> int:
    import lightning as L
    from torchdata.stateful_dataloader import StatefulDataLoader

    from datamodules.batching import ExampleDataset, SFTCollator, StepBatchSampler, build_example
    from lightning_modules.causal_lm import CausalLMModule

    tokenized = [build_example(f"ex{i:05d}", p, t, args.max_length) for i, (p, t) in enumerate(examples)]
    # built the way SkillDataModule.train_dataloader builds it, in plan order (no shuffle: all runs see the same steps)
    sampler = StepBatchSampler([len(e.input_ids) for e in tokenized], [e.num_supervised for e in tokenized],
                               args.examples_per_step, world_size=1, rank=0, micro_batches_per_step=1,
                               seed=args.seed, shuffle=False)
    loader = StatefulDataLoader(ExampleDataset(tokenized), batch_sampler=sampler,
                                collate_fn=SFTCollator(pad_token_id=0, packing=True), num_workers=0)

    class Timing(L.Callback):
        def on_train_start(self, trainer, pl_module):
            clock.rss_train_start_mb = rss_now_mb()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            mask = batch.get("attention_mask")
            positions = batch["input_ids"].numel()
            clock.begin({"supervised": int(batch["num_tokens"]), "positions": positions,
                         "real": int(mask.sum()) if mask is not None else positions})

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = trainer.callback_metrics.get("train/loss")
            clock.steps[-1]["loss"] = float(loss) if loss is not None else None
            clock.end()

    module = CausalLMModule(model_config=model_config(args), attn_implementation="auto", learning_rate=args.lr,
                            warmup_ratio=0.1, max_grad_norm=1.0)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision=args.precision,
                        max_steps=args.warmup_steps + args.steps, use_distributed_sampler=False, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[Timing()], default_root_dir=scratch)
    L.seed_everything(args.seed, verbose=False)
    trainer.fit(module, train_dataloaders=loader)
    return sum(p.numel() for p in module.model.parameters())


# ---- the HF Trainer baselines ---------------------------------------------------------------------------------
class PaddingCollator:
    """Right-pads input_ids (``pad_id``) and labels (-100) to the longest example, with an attention mask: what
    DataCollatorForSeq2Seq does, without needing a tokenizer whose pad id fits the 20k vocabulary."""

    def __init__(self, pad_id: int = 0):
        self.pad_id = pad_id

    def __call__(self, features):
        import torch

        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for r, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[r, :n] = torch.tensor(f["input_ids"])
            labels[r, :n] = torch.tensor(f["labels"])
            attention_mask[r, :n] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


class CountingCollator:
    """Wraps a collator and queues each batch's token counts, so the step callback knows what each step trained on
    (collation runs in this process: dataloader_num_workers=0; batches are consumed in collation order)."""

    def __init__(self, inner):
        self.inner = inner
        self.pending: list[dict] = []

    def __call__(self, features):
        batch = self.inner(features)
        labels = batch["labels"]
        positions = batch["input_ids"].numel()
        mask = batch.get("attention_mask")
        # HF causal-LM losses shift labels: the supervised tokens are labels[..., 1:] != -100 (as the Trainer counts)
        self.pending.append({"supervised": int((labels[..., 1:] != IGNORE_INDEX).sum()), "positions": positions,
                             "real": int(mask.sum()) if mask is not None else positions})
        return batch


def run_hf(args, examples, clock: StepClock, scratch: str, flat: bool) -> int:
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        DataCollatorWithFlattening,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    features = [{"input_ids": p + t, "labels": [IGNORE_INDEX] * len(p) + t} for p, t in examples]
    collator = CountingCollator(DataCollatorWithFlattening() if flat else PaddingCollator(pad_id=0))

    class Timing(TrainerCallback):
        def on_train_begin(self, targs, state, control, **kw):
            clock.rss_train_start_mb = rss_now_mb()

        def on_step_begin(self, targs, state, control, **kw):
            clock.begin(collator.pending.pop(0))

        def on_step_end(self, targs, state, control, **kw):
            clock.end()

        def on_log(self, targs, state, control, logs=None, **kw):
            if logs and "loss" in logs and clock.steps:
                clock.steps[-1]["loss"] = float(logs["loss"])

    cfg = dict(model_config(args))
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    set_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.config.use_cache = False
    targs = TrainingArguments(
        output_dir=scratch, per_device_train_batch_size=args.examples_per_step,
        gradient_accumulation_steps=1, max_steps=args.warmup_steps + args.steps, learning_rate=args.lr,
        lr_scheduler_type="cosine", warmup_steps=0.1, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999,
        adam_epsilon=1e-8, max_grad_norm=1.0, optim="adamw_torch_fused", bf16=args.precision == "bf16-mixed",
        use_cpu=True, dataloader_num_workers=0, report_to=[], save_strategy="no", logging_steps=1,
        train_sampling_strategy="sequential", remove_unused_columns=False, disable_tqdm=True, seed=args.seed)
    trainer = Trainer(model=model, args=targs, train_dataset=features, data_collator=collator, callbacks=[Timing()])
    trainer.train()
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--out", required=True, help="result JSON path")
    parser.add_argument("--go-fd", type=int, default=None, help="pipe the driver writes a byte to per step")
    parser.add_argument("--done-fd", type=int, default=None, help="pipe this worker writes a byte to per step")
    add_common_args(parser)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    examples = synthetic_examples(args)
    if args.warmup_steps < 1:
        raise SystemExit("--warmup-steps must be >= 1 (the first step pays one-off costs)")
    clock = StepClock(args.warmup_steps, args.warmup_steps + args.steps, Gate(args.go_fd, args.done_fd))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_training_") as scratch:
        if args.kind == "ours":
            params = run_ours(args, examples, clock, scratch)
        else:
            params = run_hf(args, examples, clock, scratch, flat=args.kind == "hf_flat")
    result = {"kind": args.kind, "parameters": params, "run_wall_s": time.perf_counter() - t0,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "threads": torch.get_num_threads(), **clock.summary()}
    write_json(args.out, result)


if __name__ == "__main__":
    main()
