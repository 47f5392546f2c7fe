"""One on-policy optimizer step (lightning_modules/on_policy.py) through the real training stack; saves the student's
gradient and the step's logged loss (rank 0). tests/test_on_policy_ranks.py runs it once in one process (the hf
engine samples the rollouts, written to ``<run_dir>/rollouts/rank0.jsonl``), then under 2-process DDP and FSDP2 on
those same rollouts split between the ranks' files (the module replays a step it finds on disk)."""

from __future__ import annotations

import argparse
import json

from skill_distill.gc_freeze import imports_frozen

with imports_frozen():  # as train.py starts (skill_distill/gc_freeze.py)
    import lightning as L
    import torch

    from datamodules import OnPolicyDataModule
    from lightning_modules import OnPolicyModule
    from lightning_modules.distill_loss import DistillationConfig
    from one_step_grads import FullGradCapture
    from skill_distill.generation.rollout import RolloutConfig
    from skill_distill.selection import SelectionConfig


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--strategy", default="ddp", choices=["ddp", "fsdp2"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    L.seed_everything(0)
    model = OnPolicyModule(model=args.student, attn_implementation="sdpa", max_grad_norm=None,
                           fsdp_mixed_precision=False, learning_rate=1e-4, loss_chunk_size=5,
                           distillation=DistillationConfig(teacher=args.teacher, teacher_dtype="float32"),
                           rollout=RolloutConfig(backend="hf", n=2, max_new_tokens=6, seed=7), canary_every_n_syncs=1)
    data = OnPolicyDataModule(corpus=args.corpus, tokenizer=args.student, max_length=256, examples_per_step=4,
                              steps_per_epoch=1, enable_thinking=False,
                              selection=SelectionConfig(strategy="random", budget=8, seed=0))
    strategy = "ddp" if args.devices > 1 else "auto"
    if args.devices > 1 and args.strategy == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=args.devices, tensor_parallel_size=1)
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy, max_steps=1,
                        use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=args.run_dir,
                        callbacks=[FullGradCapture(args.out)])
    trainer.fit(model, datamodule=data)
    if trainer.is_global_zero:
        with open(args.out + ".json", "w") as f:
            json.dump({key: float(trainer.callback_metrics[key]) for key in ("train/reverse_kl",)}, f)


if __name__ == "__main__":
    main()
