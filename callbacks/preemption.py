"""Stop cleanly on SIGTERM / SLURM pre-emption: every rank agrees at a step boundary, saves together, exits.

A signal handler only records the request (nothing else is safe inside a handler). At every optimizer-step
boundary, and at the end of every epoch but the last, the ranks all-reduce the flag (MAX), so a signal that reached
only some ranks stops all of them after the same step. (``SkillEvalCallback`` also reads the flag: it stops an
epoch's evaluation early and leaves it pending for the resumed run.) ``ResumableCheckpoint`` (which runs after
every other callback's hook of that step) then saves a checkpoint with every rank, publishes it and points
``last`` at it; rank 0 asks SLURM to requeue the job when the stop came from a requeue signal; and every rank exits
with ``exit_code`` without running train-end hooks (so no "final" export of an unfinished run). The requeued job
runs the same command with ``--ckpt_path last``.

SLURM: ``#SBATCH --signal=USR1@300`` sends SIGUSR1 five minutes before the time limit -> save, requeue, exit.
Pre-emption and ``scancel`` send SIGTERM -> save and exit, no self-requeue (a pre-empting partition with
``PreemptMode=REQUEUE`` requeues by itself; a cancelled job stays cancelled). SLURM kills with SIGKILL after its grace
time; if the save does not fit in it, the previous periodic checkpoint is still complete and valid.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading

import lightning as L
import torch

from skill_distill.io import ConfigError

log = logging.getLogger(__name__)


def is_final_epoch(trainer) -> bool:
    """Whether the epoch that is ending is the run's last (max_epochs, max_steps or a requested stop): after it the
    run finishes through its train-end hooks rather than stopping for resumption."""
    return (trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs) or trainer.should_stop \
        or (trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps)


class StopSaver:
    """Marks the checkpoint callback that saves when a stop is agreed (``callbacks.checkpointing.ResumableCheckpoint``),
    so ``PreemptionCallback`` can require one without importing the checkpoint module (which imports this one)."""


class PreemptedExit(SystemExit):
    """Raised on every rank after the pre-emption checkpoint is saved; ends the process with its code."""


class PreemptionCallback(L.Callback):
    """Args:
        signals: signal names that request a clean stop.
        requeue_signals: of those, the ones after which rank 0 runs ``scontrol requeue $SLURM_JOB_ID`` (only under
            SLURM).
        exit_code: process exit code after a pre-emption save (non-zero, so ``&&`` chains and SLURM ``afterok``
            dependencies do not treat an unfinished run as done; 143 is the shell's code for SIGTERM).
    """

    def __init__(self, signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1"),
                 requeue_signals: tuple[str, ...] = ("SIGUSR1",), exit_code: int = 143):
        self.signals = [self._signal(name) for name in signals]
        self.requeue_signals = {self._signal(name) for name in requeue_signals}
        self.exit_code = exit_code
        self.received: set[int] = set()
        self._previous: dict[int, object] = {}
        self._requeue = False

    @staticmethod
    def _signal(name: str) -> signal.Signals:
        try:
            return signal.Signals[name] if name.startswith("SIG") else signal.Signals["SIG" + name]
        except KeyError:
            raise ConfigError(f"PreemptionCallback: unknown signal {name!r}; use names like SIGTERM or SIGUSR1") \
                from None

    # ---- signal handling ------------------------------------------------------------------------------
    def _handle(self, signum, frame) -> None:
        self.received.add(signum)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and not any(isinstance(cb, StopSaver) for cb in trainer.callbacks):
            raise ConfigError("PreemptionCallback needs a callbacks.checkpointing.ResumableCheckpoint in "
                              "trainer.callbacks (it saves the pre-emption checkpoint)")

    def on_train_start(self, trainer, pl_module) -> None:
        # installed after Lightning's own handlers (registered just before training), replacing them: Lightning's
        # SIGTERM path stops on rank 0's signal alone and its SLURM SIGUSR1 path saves without the other ranks
        if threading.current_thread() is not threading.main_thread():
            log.warning("PreemptionCallback: not on the main thread; signal handlers not installed")
            return
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    # ---- agreement and exit (called by ResumableCheckpoint at every step boundary) ---------------------
    def stop_agreed(self, trainer) -> bool:
        """Whether any rank received a stop signal (a collective: every rank calls at the same step boundary)."""
        flags = torch.tensor([float(bool(self.received)), float(bool(self.received & self.requeue_signals))],
                             device=trainer.strategy.root_device)
        if trainer.world_size > 1:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        self._requeue = bool(flags[1].item())
        return bool(flags[0].item())

    def exit(self, trainer) -> None:
        """After the checkpoint is published: requeue (rank 0, SLURM, requeue signal) and leave on every rank."""
        if trainer.is_global_zero:
            log.warning("stop requested by signal (%s): checkpoint saved at step %d; exiting with code %d",
                        ", ".join(signal.Signals(s).name for s in sorted(self.received)) or "another rank",
                        trainer.global_step, self.exit_code)
            if self._requeue:
                self.requeue()
        trainer.strategy.barrier()
        raise PreemptedExit(self.exit_code)

    @staticmethod
    def requeue() -> bool:
        """``scontrol requeue`` this SLURM job (array task); False outside SLURM or on failure."""
        array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        job = f"{array_job}_{array_task}" if array_job and array_task else os.environ.get("SLURM_JOB_ID")
        if not job:
            return False
        try:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("could not requeue SLURM job %s: %s", job, e)
            return False
        if done.returncode != 0:
            log.warning("scontrol requeue %s failed: %s", job, done.stderr.strip())
        return done.returncode == 0
