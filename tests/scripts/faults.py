"""Fault injection for resumption tests (importable as `faults` with tests/scripts on PYTHONPATH)."""

from __future__ import annotations

import os

import lightning as L


class CrashAfterStep(L.Callback):
    """Kill the process (no cleanup, like a node failure) when the next step starts after ``step`` optimizer
    steps, i.e. after that step's checkpoint was written."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os._exit(17)
