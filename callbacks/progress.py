"""Progress that shows in a redirected log: one plain line every N optimizer steps.

A progress bar (rich, tqdm) redraws one terminal line; with stdout sent to a file it writes little or nothing until
the end, so a batch job's log showed no progress for minutes (rich 15.0's ``Progress`` on a redirected stream writes
only its final frame, when the task stops). So the bar stays Lightning's ``RichProgressBar`` on a terminal
(configs/quickstart.yaml), and these lines, which rich has no mode for, go through the ``callbacks`` logger
(train.py prints the project's INFO lines on stderr).
"""

from __future__ import annotations

import logging
import math
import time

import lightning as L

from skill_distill.io import ConfigError

log = logging.getLogger(__name__)


class ProgressLog(L.Callback):
    """Args:
        every_n_steps: a line every N optimizer steps (and at the first and the last step).
    """

    def __init__(self, every_n_steps: int = 10):
        if every_n_steps < 1:
            raise ConfigError(f"ProgressLog.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._t0 = 0.0
        self._step0 = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0, self._step0 = time.monotonic(), trainer.global_step
        if trainer.is_global_zero:
            log.info("training: step %d of %s", trainer.global_step, self._total(trainer))

    @staticmethod
    def _total(trainer) -> str:
        total = trainer.estimated_stepping_batches
        return str(int(total)) if math.isfinite(total) else "?"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches or not trainer.is_global_zero:
            return
        step, total = trainer.global_step, self._total(trainer)
        if step % self.every_n_steps and step != self._step0 + 1 and str(step) != total:
            return
        done = step - self._step0
        per_step = (time.monotonic() - self._t0) / max(done, 1)
        left = f", about {per_step * (int(total) - step) / 60:.1f} min left" if total != "?" else ""
        loss = trainer.callback_metrics.get("train/loss")
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        log.info("step %d/%s epoch %d: loss %s, lr %.3g, %.1f s/step%s", step, total, trainer.current_epoch,
                 "n/a" if loss is None else f"{float(loss):.4f}", lr, per_step, left)
