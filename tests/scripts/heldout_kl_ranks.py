"""The held-out per-skill KL(teacher || student) of ``SkillEvalCallback.held_out_divergence`` at the start of
training, through the real stack: one process, or 2 gloo ranks under ModelParallelStrategy (student and teacher
FSDP2-sharded, each rank scoring its share of the held-out slice). Rank 0 writes the divergence to ``--out``
(tests/test_skill_divergence.py compares the two), as ``{"slice": ..., "one_problem": ...}``: the second is the same
measure on a held-out set of one problem, so that on 2 ranks one rank has nothing of its own and scores the filler
(``SkillEvalCallback._filler_batches``) in every collective forward.

``--own_samples``: an on-policy module (``OnPolicyModule``); at the start of training a whole in-training evaluation
of the held-out set (``SkillEvalCallback.evaluate``: export, HF generate in a child process per rank, each rank
scoring the KL(student || teacher) of its own samples before the gather, the report), then the run stops. Rank 0
writes the report's ``sample_divergence`` to ``--out``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from skill_distill.gc_freeze import imports_frozen

with imports_frozen():  # as train.py starts (skill_distill/gc_freeze.py)
    import lightning as L
    import torch

    from callbacks.skill_eval import SkillEvalCallback
    from datamodules import SkillDataModule
    from lightning_modules import CausalLMModule, OnPolicyModule
    from lightning_modules.distill_loss import DistillationConfig
    from skill_distill.generation.base import SamplingConfig
    from skill_distill.generation.factory import HFConfig
    from skill_distill.grading import GradingConfig
    from skill_distill.selection import SelectionConfig

QS = Path(__file__).resolve().parents[2] / "data" / "quickstart"


class HeldOutKL(L.Callback):
    """Sets up a SkillEvalCallback (not one of the trainer's: its final evaluation would generate) and writes its
    held-out divergence before the first step."""

    def __init__(self, out: str):
        self.out = out
        self.skill_eval, self.one_problem = (
            SkillEvalCallback(benchmarks=[{"name": "heldout", **limits, "k": 1}], backend=HFConfig(),
                              grading=GradingConfig(workers=0), timeout_s=600)
            for limits in ({"limit_per_skill": 2}, {"limit": 1}))

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.skill_eval.setup(trainer, pl_module, stage)
        self.one_problem.setup(trainer, pl_module, stage)

    def on_train_start(self, trainer, pl_module) -> None:
        measured = {name: callback.held_out_divergence(trainer, pl_module)
                    for name, callback in (("slice", self.skill_eval), ("one_problem", self.one_problem))}
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps(measured))


class OwnSampleKL(HeldOutKL):
    """Runs a whole held-out evaluation of the on-policy student before the first step (sampled: every sequence
    from its own seeded generator, so the same texts on 1 or 2 ranks; a problem's two samples may lie on different
    ranks), writes its ``sample_divergence`` and stops."""

    def __init__(self, out: str):
        self.out = out
        self.skill_eval, self.one_problem = (
            SkillEvalCallback(benchmarks=[{"name": "heldout", **limits}], export_dtype=None,
                              backend=HFConfig(batch_size=1), sampling=SamplingConfig(temperature=1.0,
                                                                                      max_new_tokens=8),
                              grading=GradingConfig(workers=0), timeout_s=600)
            for limits in ({"limit_per_skill": 1, "k": 2}, {"limit": 1, "k": 1}))

    def on_train_start(self, trainer, pl_module) -> None:
        reports = {name: callback.evaluate(trainer, pl_module, tag)  # the report on rank 0, None on the others
                   for name, callback, tag in (("slice", self.skill_eval, "own_samples"),
                                               ("one_problem", self.one_problem, "own_samples_one"))}
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps({name: report["benchmarks"]["heldout"]["metrics"]["sample_divergence"]
                                                  for name, report in reports.items()}))
        trainer.should_stop = True


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--own_samples", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = OnPolicyModule if args.own_samples else CausalLMModule
    model = module(model=args.student, attn_implementation="sdpa_packed", fsdp_mixed_precision=False,
                   distillation=DistillationConfig(teacher=args.teacher, teacher_dtype="float32", chunk_size=7))
    data = SkillDataModule(corpus=str(QS / "pool.jsonl"), tokenizer=args.student, tree=str(QS / "tree.json"),
                           attribution=str(QS / "attribution.jsonl"), val_corpus=str(QS / "heldout.jsonl"),
                           max_length=256, examples_per_step=2, val_micro_batch_size=3,
                           selection=SelectionConfig(strategy="random", budget=4, seed=0))
    strategy = "auto"
    if args.devices > 1:
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=args.devices, tensor_parallel_size=1)
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy, max_steps=1,
                        use_distributed_sampler=False, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=args.run_dir,
                        callbacks=[(OwnSampleKL if args.own_samples else HeldOutKL)(args.out)])
    trainer.fit(model, datamodule=data)


if __name__ == "__main__":
    main()
