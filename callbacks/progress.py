"""Progress that shows in a redirected log: one plain line every N optimizer steps, and one per validation-loss pass.

A progress bar (rich, tqdm) redraws one terminal line; with stdout sent to a file it writes little or nothing until
the end, so a batch job's log showed no progress for minutes (rich 15.0's ``Progress`` on a redirected stream writes
only its final frame, when the task stops). So the bar stays Lightning's ``RichProgressBar`` on a terminal
(configs/quickstart.yaml), and these lines, which rich has no mode for, go through the ``callbacks`` logger
(train.py prints the project's INFO lines on stderr). Checkpoint writes have their line where they are written
(callbacks/checkpointing.py: what, where, how large, how long).

The time per step, and so the time left, is measured from the start of the first step this process trains: what
ran before it (the baseline evaluation, a resumed run's evaluation of its restored weights, setting up) is done and
does not recur, so it is not spread over the remaining steps. Later evaluations and validation passes are inside the
measured time, as they recur every epoch.
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
        self._t0: float | None = None
        self._step0 = 0
        self._val_t0 = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0, self._step0 = None, trainer.global_step
        if trainer.is_global_zero:
            log.info("training: step %d of %s", trainer.global_step, self._total(trainer))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:  # the clock starts with the first step: evaluations before it are finished
            self._t0, self._step0 = time.monotonic(), trainer.global_step

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

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_t0 = time.monotonic()
        if trainer.is_global_zero and not trainer.sanity_checking:
            log.info("validation loss: %s batches at step %d", _batches(trainer.num_val_batches), trainer.global_step)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        loss = trainer.callback_metrics.get("val/loss")
        log.info("validation loss: %s at step %d, in %.1f s", "n/a" if loss is None else f"{float(loss):.4f}",
                 trainer.global_step, time.monotonic() - self._val_t0)


def _batches(counts) -> str:
    total = sum(counts) if counts else 0
    return str(int(total)) if math.isfinite(total) else "?"
