"""Run one optimizer step of the real training stack and save the gradient it produced (rank 0), for plain SFT
(``--objective ce``) or logit distillation with a tiny teacher beside the student (``--objective kd``).

Used by tests/test_loss_normalisation.py (ce) and tests/test_distill_normalisation.py (kd): in-process through
``main(argv)`` for one process, and as a script under 2 processes (Lightning's DDP launcher re-runs the command in
its children, which must not be pytest).
"""

from __future__ import annotations

import argparse
import json

from skill_distill.gc_freeze import imports_frozen

with imports_frozen():  # as train.py starts (skill_distill/gc_freeze.py)
    import lightning as L
    import torch

    from datamodules import SkillDataModule
    from lightning_modules import CausalLMModule
    from lightning_modules.distill_loss import DistillationConfig
    from skill_distill.assets import tiny_qwen3_config

MODEL_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings")


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


def build_model(args) -> CausalLMModule:
    if args.objective == "ce":
        config = tiny_qwen3_config()
        settings = {"loss_implementation": args.loss, "loss_chunk_size": args.loss_chunk_size}
    else:  # a smaller student beside the teacher
        config = tiny_qwen3_config(hidden_size=64, intermediate_size=128, num_attention_heads=1)
        settings = {"tokenizer": args.tokenizer, "fsdp_mixed_precision": False,
                    "distillation": DistillationConfig(teacher=args.teacher, alpha=0.25, divergence=args.divergence,
                                                       beta=0.3, tau=1.5, chunk_size=args.chunk_size,
                                                       teacher_dtype="float32")}
    model_config = {k: config.to_dict()[k] for k in MODEL_KEYS}
    return CausalLMModule(model_config=model_config, attn_implementation="sdpa", max_grad_norm=None,
                          learning_rate=1e-4, **settings)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objective", choices=["ce", "kd"], default="ce",
                    help="ce: supervised cross-entropy; kd: logit distillation from --teacher")
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp2"],
                    help="with --devices 2: DDP, or FSDP2 (ModelParallelStrategy: student and teacher sharded)")
    ap.add_argument("--examples_per_step", type=int, default=8)
    ap.add_argument("--packing", type=int, default=1)
    ap.add_argument("--loss", default="auto", help="ce: model.loss_implementation")
    ap.add_argument("--loss_chunk_size", type=int, default=1024, help="ce: model.loss_chunk_size")
    ap.add_argument("--teacher", help="kd: the teacher model directory")
    ap.add_argument("--divergence", default="jsd", help="kd: model.distillation.divergence")
    ap.add_argument("--chunk_size", type=int, default=64, help="kd: model.distillation.chunk_size")
    args = ap.parse_args(argv)
    if args.objective == "kd" and not args.teacher:
        ap.error("--objective kd needs --teacher")
    if args.devices > 1:  # ranks share the cores; one process keeps torch's (OMP_NUM_THREADS)
        torch.set_num_threads(1)
    L.seed_everything(0)
    model = build_model(args)
    data = SkillDataModule(corpus=args.corpus, tokenizer=args.tokenizer, max_length=256,
                           examples_per_step=args.examples_per_step, packing=bool(args.packing), shuffle=False)
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
        keys = ["train/loss"] + (["train/ce", f"train/{args.divergence}"] if args.objective == "kd" else [])
        with open(args.out + ".json", "w") as f:
            json.dump({key: float(trainer.callback_metrics[key]) for key in keys}, f)


if __name__ == "__main__":
    main()
