"""One training run of the real stack for the resumption tests (tests/test_resume.py, tests/test_fsdp2.py).

Single process, DDP or FSDP2 (ModelParallelStrategy, distributed or full checkpoints), 1 node x N devices or a
2-"node" simulation (the test starts one process per node with NODE_RANK set). Writes, under --run_dir:
step_trace.rank{r}.jsonl (ids, loss, lr per optimizer step), rng.rank{r}.jsonl, checkpoints/, and with
--logits_out the trained model's logits on a fixed prompt (computed collectively, written by rank 0).
Faults: --crash_after_step (os._exit), --sigterm_at_step/--sigterm_rank, --kill_in_save_at_step (SIGKILL mid-save).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from skill_distill.gc_freeze import imports_frozen

with imports_frozen():  # as train.py starts (skill_distill/gc_freeze.py)
    import lightning as L
    import torch

    from callbacks import StepTraceCallback
    from callbacks.checkpointing import ResumableCheckpoint
    from callbacks.preemption import PreemptionCallback
    from datamodules import SkillDataModule
    from lightning_modules import CausalLMModule
    from skill_distill.run_layout import RunLayout

PROMPT_IDS = [151644, 872, 198, 3838, 374, 220, 17, 10, 17, 30, 151645, 198, 151644, 77091, 198]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--model", required=True, help="HF directory of the starting weights")
    ap.add_argument("--accelerator", default="cpu", help="cpu (the tests) or gpu (scripts/first_gpu_run.py)")
    ap.add_argument("--strategy", choices=["single", "ddp", "fsdp2"], default="single")
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--num_nodes", type=int, default=1)
    ap.add_argument("--ckpt_format", choices=["distributed", "full"], default="distributed")
    ap.add_argument("--packing", type=int, default=1)
    ap.add_argument("--examples_per_step", type=int, default=4)
    ap.add_argument("--max_epochs", type=int, default=2)
    ap.add_argument("--every_n_steps", type=int, default=2)
    ap.add_argument("--resume", action="store_true", help="--ckpt_path last")
    ap.add_argument("--crash_after_step", type=int)
    ap.add_argument("--sigterm_at_step", type=int)
    ap.add_argument("--sigterm_rank", type=int, default=0)
    ap.add_argument("--kill_in_save_at_step", type=int)
    ap.add_argument("--logits_out")
    args = ap.parse_args()
    if args.devices * args.num_nodes > 1:  # ranks share the cores; one process keeps torch's (OMP_NUM_THREADS)
        torch.set_num_threads(1)

    import faults

    L.seed_everything(42, verbose=False)
    model = CausalLMModule(model=args.model, attn_implementation="sdpa", fsdp_mixed_precision=False,
                           learning_rate=1e-3, warmup_ratio=0.25, max_grad_norm=1.0)
    data = SkillDataModule(corpus=args.corpus, tokenizer=args.tokenizer, max_length=96,
                           examples_per_step=args.examples_per_step, packing=bool(args.packing), seed=42)
    if args.strategy == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=args.devices * args.num_nodes, tensor_parallel_size=1,
                                         save_distributed_checkpoint=args.ckpt_format == "distributed")
    else:
        strategy = "ddp" if args.strategy == "ddp" else "auto"
    callbacks = [StepTraceCallback(), faults.RandomProbe(),
                 ResumableCheckpoint(every_n_train_steps=args.every_n_steps, keep_last=2), PreemptionCallback()]
    if args.crash_after_step is not None:
        callbacks.append(faults.CrashAfterStep(args.crash_after_step))
    if args.sigterm_at_step is not None:
        callbacks.append(faults.SignalAtStep(args.sigterm_at_step, signal.SIGTERM, rank=args.sigterm_rank))
    if args.kill_in_save_at_step is not None:
        callbacks.append(faults.KillDuringSave(args.kill_in_save_at_step))
    trainer = L.Trainer(accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes, strategy=strategy,
                        max_epochs=args.max_epochs, precision="32-true", use_distributed_sampler=False,
                        default_root_dir=args.run_dir, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks)
    # the link train.py resolves --ckpt_path last to (Lightning's own "last" lookup knows only ModelCheckpoint)
    resume = RunLayout.of(trainer).last_checkpoint if args.resume else None
    trainer.fit(model, datamodule=data, ckpt_path=resume)

    if args.logits_out:
        model.model.eval()
        with torch.no_grad():
            logits = model.model(input_ids=torch.tensor([PROMPT_IDS], device=model.device), use_cache=False).logits
        if trainer.is_global_zero:
            torch.save(logits.cpu(), args.logits_out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
