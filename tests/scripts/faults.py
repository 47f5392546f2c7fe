"""Fault injection for resumption tests (importable as `faults` with tests/scripts on PYTHONPATH)."""

from __future__ import annotations

import os
import threading

import lightning as L


class CrashAfterStep(L.Callback):
    """Kill the process (no cleanup, like a node failure) when the next step starts after ``step`` optimizer
    steps, i.e. after that step's checkpoint was written."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os._exit(17)


class SignalAtStep(L.Callback):
    """Send ``signum`` to this process after optimizer step ``step`` on global rank ``rank`` only (like a
    pre-emption notice that reaches one node first)."""

    def __init__(self, step: int, signum: int, rank: int = 0):
        self.step, self.signum, self.rank = step, signum, rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank and not getattr(self, "_sent", False):
            self._sent = True
            os.kill(os.getpid(), self.signum)


class SignalDuringEpochEnd(L.Callback):
    """Send ``signum`` to this process ``delay_s`` seconds after epoch ``epoch``'s end hooks start, once: placed
    before SkillEvalCallback, the signal arrives while that epoch's evaluation engine is generating."""

    def __init__(self, epoch: int, signum: int, delay_s: float = 2.0):
        self.epoch, self.signum, self.delay_s = epoch, signum, delay_s
        self._sent = False

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch and not self._sent:
            self._sent = True
            threading.Timer(self.delay_s, os.kill, (os.getpid(), self.signum)).start()


class KillDuringSave(L.Callback):
    """SIGKILL global rank 0 in the middle of the distributed checkpoint of optimizer step ``step``: right after
    its own shard file is written, before the checkpoint's ``.metadata`` exists (a node dying mid-save).

    Hooks torch.distributed.checkpoint's FileSystemWriter.write_data, which every rank calls once per save."""

    def __init__(self, step: int):
        self.step = step
        from torch.distributed.checkpoint import FileSystemWriter

        original = FileSystemWriter.write_data
        hook = self

        def write_then_die(writer, plan, planner):
            future = original(writer, plan, planner)
            if hook.armed:
                future.wait()
                os.kill(os.getpid(), 9)
            return future

        self.armed = False
        FileSystemWriter.write_data = write_then_die

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # callbacks of this kind run before the checkpoint callback, which saves in the same hook
        self.armed = trainer.global_step == self.step and trainer.global_rank == 0


class RandomProbe(L.Callback):
    """Record one torch random draw per step and rank, in ``<default_root_dir>/rng.rank{rank}.jsonl`` (the
    checkpoint callback re-seeds at step start, so resumed runs must draw the same numbers)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import json

        import torch

        with open(os.path.join(trainer.default_root_dir, f"rng.rank{trainer.global_rank}.jsonl"), "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "draw": torch.rand(1).item()}) + "\n")


class DiskFullAtSave(L.Callback):
    """The checkpoint save of optimizer step ``step`` hits a full disk: half of the file is written, then
    ``OSError(ENOSPC)`` (as the kernel reports a full filesystem mid-write)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        io = trainer.strategy.checkpoint_io
        original = io.save_checkpoint

        def save_until_full(checkpoint, path, storage_options=None):
            original(checkpoint, path, storage_options)
            import errno
            from pathlib import Path

            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])

            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        io.save_checkpoint = save_until_full
