"""One optimizer step of logit distillation (a tiny teacher beside a tiny student) through the real training stack;
saves the student's gradient (rank 0). tests/test_distill_normalisation.py runs it in-process for one process and
as a script under 2-process DDP (Lightning's launcher re-runs the command in its children)."""

from __future__ import annotations

import argparse
import json

import lightning as L
import torch

from datamodules import SkillDataModule
from lightning_modules import CausalLMModule
from lightning_modules.distill_loss import DistillationConfig


class FullGradCapture(L.Callback):
    """The first step's gradients, whole (FSDP2 shards gathered: a collective, every rank calls), saved by rank 0."""

    def __init__(self, out: str):
        self.out = out

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0:
            grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
                     for n, p in pl_module.model.named_parameters() if p.grad is not None}
            if trainer.is_global_zero:
                torch.save(grads, self.out)


STUDENT = {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 1, "num_key_value_heads": 1, "head_dim": 64,
           "tie_word_embeddings": True}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--divergence", default="jsd")
    ap.add_argument("--chunk_size", type=int, default=64)
    ap.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp2"],
                    help="with --devices 2: DDP, or FSDP2 (ModelParallelStrategy: student and teacher sharded)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1 if args.devices > 1 else 2)
    L.seed_everything(0)
    distillation = DistillationConfig(teacher=args.teacher, alpha=0.25, divergence=args.divergence, beta=0.3, tau=1.5,
                                      chunk_size=args.chunk_size, teacher_dtype="float32")
    model = CausalLMModule(model_config=STUDENT, tokenizer=args.tokenizer, attn_implementation="sdpa",
                           max_grad_norm=None, fsdp_mixed_precision=False, learning_rate=1e-4,
                           distillation=distillation)
    data = SkillDataModule(corpus=args.corpus, tokenizer=args.tokenizer, max_length=256, examples_per_step=8,
                           packing=True, shuffle=False)
    strategy = "ddp" if args.devices > 1 else "auto"
    if args.devices > 1 and args.strategy == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=args.devices, tensor_parallel_size=1)
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy,
                        max_steps=1, accumulate_grad_batches=args.accumulate, use_distributed_sampler=False,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[FullGradCapture(args.out)])
    trainer.fit(model, datamodule=data)
    if trainer.is_global_zero:
        with open(args.out + ".json", "w") as f:
            json.dump({key: float(trainer.callback_metrics[key]) for key in ("train/loss", "train/ce",
                                                                              f"train/{args.divergence}")}, f)


if __name__ == "__main__":
    main()
