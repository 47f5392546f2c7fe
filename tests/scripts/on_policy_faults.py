"""A kill -9 in the middle of an on-policy step (``on_policy_faults`` with tests/scripts on PYTHONPATH)."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillBeforeBackward(L.Callback):
    """SIGKILL this process in optimizer step ``step`` after its forward, i.e. after the step's rollouts were written
    to the run directory and before the step's update: the resumed run must replay them, not sample anew."""

    def __init__(self, step: int):
        self.step = step

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
