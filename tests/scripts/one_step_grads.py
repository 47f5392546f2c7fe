"""Run one optimizer step of the real training stack and save the gradient it produced (rank 0).

Used by tests/test_loss_normalisation.py: in-process through ``main(argv)`` for one process, and as a script under
2-process DDP (Lightning's DDP launcher re-runs the command in its children, which must not be pytest).
"""

from __future__ import annotations

import argparse
import json

import lightning as L
import torch

from datamodules import SkillDataModule
from lightning_modules import CausalLMModule
from skill_distill.assets import tiny_qwen3_config


class GradCapture(L.Callback):
    def __init__(self, out: str):
        self.out = out

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0:
            grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters() if p.grad is not None}
            if trainer.is_global_zero:
                torch.save(grads, self.out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--examples_per_step", type=int, default=8)
    ap.add_argument("--packing", type=int, default=1)
    ap.add_argument("--loss", default="auto", help="model.loss_implementation")
    ap.add_argument("--loss_chunk_size", type=int, default=1024)
    args = ap.parse_args(argv)
    torch.set_num_threads(1 if args.devices > 1 else 2)
    L.seed_everything(0)
    cfg = tiny_qwen3_config().to_dict()
    model = CausalLMModule(model_config={k: cfg[k] for k in (
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "tie_word_embeddings")}, attn_implementation="sdpa", max_grad_norm=None,
        learning_rate=1e-4, loss_implementation=args.loss, loss_chunk_size=args.loss_chunk_size)
    data = SkillDataModule(corpus=args.corpus, tokenizer=args.tokenizer, max_length=256,
                           examples_per_step=args.examples_per_step, packing=bool(args.packing), shuffle=False)
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
                        max_steps=1, accumulate_grad_batches=args.accumulate, use_distributed_sampler=False,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[GradCapture(args.out)])
    trainer.fit(model, datamodule=data)
    if trainer.is_global_zero:
        with open(args.out + ".json", "w") as f:
            json.dump({"loss": float(trainer.callback_metrics["train/loss"])}, f)


if __name__ == "__main__":
    main()
