"""One closed-loop training run for tests/test_closed_loop.py: the tiny Qwen3 on the quickstart data, skill
selection re-selected after every epoch from slice verdicts read from files (``ReselectionCallback.verdicts_dir``).
Writes step_trace.rank{r}.jsonl, selection/epoch=<k>.json and checkpoints/ under --run_dir; --crash_after_step
kills the process (os._exit) like a node failure."""

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
    from callbacks.reselection import ReselectionCallback
    from datamodules import SkillDataModule
    from lightning_modules import CausalLMModule
    from skill_distill.reselection import ReselectionConfig
    from skill_distill.run_layout import RunLayout
    from skill_distill.selection import SelectionConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--data", required=True, help="the quickstart data directory")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--verdicts_dir", help="slice verdicts per epoch; without it the slice is generated with vLLM")
    ap.add_argument("--every_n_epochs", type=int, default=1)
    ap.add_argument("--max_epochs", type=int, default=3)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--crash_after_step", type=int)
    ap.add_argument("--every_n_steps", type=int, default=2)
    ap.add_argument("--sigterm_during_reprofile", type=int, help="send SIGTERM while this epoch's re-profile runs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import faults

    data = Path(args.data)
    L.seed_everything(42, verbose=False)
    model = CausalLMModule(model=args.model, attn_implementation="sdpa", fsdp_mixed_precision=False,
                           learning_rate=1e-3, warmup_ratio=0.25, max_grad_norm=1.0)
    dm = SkillDataModule(corpus=str(data / "pool.jsonl"), tokenizer=args.tokenizer, tree=str(data / "tree.json"),
                         attribution=str(data / "attribution.jsonl"), profile=str(data / "profile" / "profile.json"),
                         selection=SelectionConfig(strategy="skill", budget=24, seed=42), max_length=96,
                         examples_per_step=8, seed=42,
                         reselection=ReselectionConfig(every_n_epochs=args.every_n_epochs, per_leaf=2))
    from skill_distill.generation.base import SamplingConfig
    from skill_distill.generation.factory import VLLMConfig

    reselect = ReselectionCallback(verdicts_dir=args.verdicts_dir, export_dtype=None, timeout_s=600,
                                   backend=VLLMConfig(max_model_len=512),
                                   sampling=SamplingConfig(temperature=0.6, top_p=1.0, max_new_tokens=24, seed=7))
    # placed before the re-profile: its timer fires while the re-profile runs
    signal_first = [] if args.sigterm_during_reprofile is None else [
        faults.SignalDuringEpochEnd(args.sigterm_during_reprofile, signal.SIGTERM, delay_s=3.0)]
    callbacks = [StepTraceCallback(), *signal_first, reselect,
                 ResumableCheckpoint(every_n_train_steps=args.every_n_steps, keep_last=2), PreemptionCallback()]
    if args.crash_after_step is not None:
        callbacks.append(faults.CrashAfterStep(args.crash_after_step))
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
                        max_epochs=args.max_epochs, precision="32-true", use_distributed_sampler=False,
                        default_root_dir=args.run_dir, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks)
    # the link train.py resolves --ckpt_path last to (Lightning's own "last" lookup knows only ModelCheckpoint)
    resume = RunLayout.of(trainer).last_checkpoint if args.resume else None
    trainer.fit(model, datamodule=dm, ckpt_path=resume)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
