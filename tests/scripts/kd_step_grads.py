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
from one_step_grads import GradCapture

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
    args = ap.parse_args(argv)
    torch.set_num_threads(1 if args.devices > 1 else 2)
    L.seed_everything(0)
    model = CausalLMModule(model_config=STUDENT, tokenizer=args.tokenizer, attn_implementation="sdpa",
                           max_grad_norm=None, learning_rate=1e-4, distillation=DistillationConfig(
                               teacher=args.teacher, alpha=0.25, divergence=args.divergence, beta=0.3, tau=1.5,
                               chunk_size=args.chunk_size, teacher_dtype="float32"))
    data = SkillDataModule(corpus=args.corpus, tokenizer=args.tokenizer, max_length=256, examples_per_step=8,
                           packing=True, shuffle=False)
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
                        max_steps=1, accumulate_grad_batches=args.accumulate, use_distributed_sampler=False,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[GradCapture(args.out)])
    trainer.fit(model, datamodule=data)
    if trainer.is_global_zero:
        with open(args.out + ".json", "w") as f:
            json.dump({key: float(trainer.callback_metrics[key]) for key in ("train/loss", "train/ce",
                                                                              f"train/{args.divergence}")}, f)


if __name__ == "__main__":
    main()
