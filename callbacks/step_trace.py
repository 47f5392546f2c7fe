"""Per-step audit trail: which examples each rank trained on, with the step's loss and learning rate.

One JSONL row per optimizer step and rank: ``{"step", "rank", "epoch", "ids", "loss", "lr"}``. It makes data order
and resumption checkable (an interrupted-then-resumed run must write the same rows as an uninterrupted one).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from skill_distill.run_layout import RunLayout


class StepTraceCallback(L.Callback):
    """Args:
        path: JSONL file, inside the run directory when relative; ``{rank}`` in the name is replaced by the global
            rank (default: ``step_trace.rank{rank}.jsonl``, i.e. in ``<default_root_dir>``). Rows are appended,
            so a resumed run continues it.
    """

    def __init__(self, path: str | None = None):
        self.path = path
        self._ids: list[str] = []

    def _file(self, trainer) -> Path:
        layout = RunLayout.of(trainer)
        return Path(str(layout.inside(self.path, layout.step_trace())).format(rank=trainer.global_rank))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._ids.extend(batch["example_ids"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # an optimizer step just happened when the accumulation window closed
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        row = {"step": trainer.global_step, "rank": trainer.global_rank, "epoch": trainer.current_epoch,
               "ids": self._ids, "loss": float(trainer.callback_metrics.get("train/loss", float("nan"))),
               "lr": trainer.optimizers[0].param_groups[0]["lr"]}
        self._ids = []
        f = self._file(trainer)
        f.parent.mkdir(parents=True, exist_ok=True)
        with f.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
