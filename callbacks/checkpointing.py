"""Checkpoints that make a run restartable at any moment: atomic publish, a ``last`` alias, rotation.

Under ``ModelParallelStrategy`` (FSDP2) a checkpoint is a directory written by every rank through
torch.distributed.checkpoint (one shard file per rank + ``.metadata`` + Lightning's ``meta.pt`` with loops, data
position, callbacks, schedulers); under other strategies it is one file. Either way it is complete before it counts.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import time
from pathlib import Path
from weakref import proxy

import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from torch.distributed.checkpoint.api import CheckpointException

from callbacks.preemption import PreemptionCallback, StopSaver, is_final_epoch
from skill_distill.io import TMP_PREFIX, TRASH_PREFIX, ConfigError, DataError, point_link, publish_path, remove_path
from skill_distill.run_layout import RunLayout

log = logging.getLogger(__name__)


def _root_cause(error: BaseException) -> BaseException:
    """The first underlying exception of a wrapped one (DCP wraps a rank's OSError with its traceback)."""
    while True:
        inner = error.__cause__ or error.__context__
        if inner is None or isinstance(error, OSError):
            return error
        error = inner


class EpochEndEvaluation:
    """A callback that evaluates the trained weights in its ``on_train_epoch_end`` (``SkillEvalCallback``,
    ``ReselectionCallback``). Before the first of them runs, ``ResumableCheckpoint.save_before_evaluations`` asks each
    to mark what it will run at this epoch end as pending and checkpoints the trained weights with those marks, so a
    run killed during an evaluation (kill -9, the OOM killer) resumes from that checkpoint and runs the pending
    evaluations first instead of training the epoch again."""

    def mark_pending_at_epoch_end(self, trainer) -> bool:
        """Record the evaluation this callback runs at the end of the current epoch as pending (its checkpointed
        state); False when it runs none at this epoch end."""
        raise NotImplementedError

    def pending_metrics_prefix(self) -> str | None:
        """The prefix of the metrics a pending evaluation logs (``eval/``), None when nothing is pending: a resume
        that redoes it drops what an earlier attempt logged of it at the checkpoint's step."""
        raise NotImplementedError


def cut_logs_to_checkpoint(trainer) -> None:
    """A resumed run redoes the steps after its checkpoint (``trainer.global_step`` once restored), and the
    evaluations its checkpoint marks pending: loggers that can (``RunCSVLogger.resume_at``) drop what an earlier
    attempt logged of them, before the first redone step or evaluation logs."""
    if trainer.is_global_zero:
        redone = tuple(prefix for cb in trainer.callbacks if isinstance(cb, EpochEndEvaluation)
                       for prefix in [cb.pending_metrics_prefix()] if prefix)
        for logger in trainer.loggers:
            if callable(getattr(logger, "resume_at", None)):
                logger.resume_at(trainer.global_step, redone)


def resumable_checkpoint(trainer) -> ResumableCheckpoint | None:
    """The run's ``ResumableCheckpoint`` (None when it has none: nothing is checkpointed)."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, ResumableCheckpoint)), None)


def project_classes(*objects) -> set[type]:
    """The project's own config classes (dataclasses, enums) found inside ``objects`` (hyperparameters)."""
    import dataclasses
    import enum

    from lightning_modules.checkpoint_export import PROJECT_PACKAGES

    found: set[type] = set()
    stack = list(objects)
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set)):
            stack.extend(obj)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type) or isinstance(obj, enum.Enum):
            cls = type(obj)
            if cls.__module__.split(".")[0] in PROJECT_PACKAGES and cls not in found:
                found.add(cls)
                if dataclasses.is_dataclass(obj):
                    stack.extend(getattr(obj, f.name) for f in dataclasses.fields(obj))
    return found


def allow_project_classes(trainer, pl_module, checkpoints: list[Path]) -> None:
    """Let Lightning's ``torch.load(weights_only=True)`` of a checkpoint accept the project's own classes (and only
    those): the ones in this run's hyperparameters, and the ones recorded in ``checkpoints`` (e.g. in callback
    states). Foreign classes stay refused."""
    from lightning_modules.checkpoint_export import LIGHTNING_META, checkpoint_globals

    classes = project_classes(dict(pl_module.hparams), dict(trainer.datamodule.hparams) if trainer.datamodule else {})
    for ckpt in checkpoints:
        pickled = ckpt / LIGHTNING_META if ckpt.is_dir() else ckpt
        if pickled.is_file():
            try:
                classes.update(checkpoint_globals(pickled)[0])
            except Exception:  # noqa: BLE001 - unreadable: Lightning reports it when loading
                pass
    if classes:
        torch.serialization.add_safe_globals(sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}"))


def checkpoint_bytes(trainer) -> int:
    """About what one checkpoint of this rank takes: its parameters, buffers and optimizer state."""
    total = sum(t.numel() * t.element_size() for t in trainer.lightning_module.state_dict().values()
                if isinstance(t, torch.Tensor))
    for opt in trainer.optimizers:
        for state in opt.state.values():
            total += sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))
    return total


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _bytes_on_disk(path: Path) -> int:
    """A checkpoint file's size, or the total of a sharded checkpoint directory's files."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def step_seed(base: int, step: int, rank: int) -> int:
    """A seed that depends only on (base seed, optimizer step, global rank)."""
    return int(np.random.SeedSequence([base, step, rank]).generate_state(1)[0])


class CheckpointDirectory:
    """The run's checkpoint directory, torchtitan's shape: a plain component around the public
    ``Trainer.save_checkpoint``. A save writes a temporary, publishes it under its step's name, points ``last`` at it
    and then rotates (deletes what falls out of the ``keep_last`` newest), so a crash at any moment leaves ``last``
    on a complete checkpoint. Every method is a collective: every rank calls it.

    ``kept`` (names, oldest first) is checkpointed by ``ResumableCheckpoint``: a resumed run goes on rotating what
    the earlier one wrote, also after the run directory moved (names, not paths)."""

    def __init__(self, layout: RunLayout, keep_last: int):
        self.dirpath = layout.checkpoints
        self.last = layout.last_checkpoint
        self.keep_last = keep_last
        self.kept: list[str] = []

    def path_for(self, step: int) -> Path:
        return self.dirpath / f"step={step:07d}.ckpt"

    def remove_leftovers(self, trainer) -> None:
        """Delete what an interrupted save or delete of an earlier attempt left (hidden temporaries, trash)."""
        if trainer.is_global_zero and self.dirpath.is_dir():
            for leftover in self.dirpath.iterdir():
                if leftover.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                    log.info("removing incomplete checkpoint %s", leftover)
                    if leftover.is_dir() and not leftover.is_symlink():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink(missing_ok=True)
        trainer.strategy.barrier()

    def save(self, trainer, weights_only: bool = False) -> Path:
        """Write the current step (temporary -> publish -> link -> rotate; an earlier checkpoint of the same step is
        replaced) and return its path."""
        final = self.path_for(trainer.global_step)
        before = list(self.kept)
        # the list the checkpoint records already names itself and no longer names what it rotates out
        self.kept = [name for name in before if name != final.name] + [final.name]
        dropped, self.kept = self.kept[:-self.keep_last], self.kept[-self.keep_last:]
        try:
            self._write(trainer, final, weights_only)
        except BaseException:
            self.kept = before
            raise
        if trainer.is_global_zero:
            point_link(self.last, final)
            for name in dropped:  # only now: `last` no longer points at any of them
                remove_path(self.dirpath / name)
        trainer.strategy.barrier()
        return final

    def _write(self, trainer, final: Path, weights_only: bool) -> None:
        tmp = final.with_name(TMP_PREFIX + final.name)
        if trainer.is_global_zero:
            final.parent.mkdir(parents=True, exist_ok=True)
            if tmp.exists() or tmp.is_symlink():
                remove_path(tmp)
        trainer.strategy.barrier()
        start = time.monotonic()
        error: BaseException | None = None
        try:
            trainer.save_checkpoint(str(tmp), weights_only)  # ends with a barrier: every shard is written
        except CheckpointException as e:  # torch.distributed.checkpoint: every rank gets the failures of all
            error = next(iter(e.failures.values()))[0] if e.failures else e  # (exception, traceback) per rank
        except OSError as e:  # one writer (rank 0) failed before the closing barrier the other ranks wait in
            error = e
            if trainer.world_size > 1:
                trainer.strategy.barrier("Trainer.save_checkpoint")
        # every rank learns that the save failed, so none waits in a collective the others never reach
        failed = trainer.strategy.reduce_boolean_decision(error is not None, all=False)
        if failed:
            if trainer.is_global_zero:
                remove_path(tmp)  # a partial checkpoint must not keep the disk full (one remover: a shared directory)
            trainer.strategy.barrier()
            codes = (errno.ENOSPC, errno.EDQUOT)
            if error is None or getattr(_root_cause(error), "errno", None) in codes:  # another rank's disk full
                free = shutil.disk_usage(final.parent).free
                raise DataError(f"no space left on the device of {final.parent} while saving a checkpoint: one needs "
                                f"about {_gb(checkpoint_bytes(trainer))} ({_gb(free)} free); free space there or move "
                                "trainer.default_root_dir, then resume with --ckpt_path last (the previous checkpoint "
                                "is intact)") from None
            raise error
        if trainer.is_global_zero:
            publish_path(tmp, final)
            log.info("saved checkpoint of step %d (%s, %s) to %s in %.1f s", trainer.global_step,
                     "weights" if weights_only else "weights and training state", _gb(_bytes_on_disk(final)), final,
                     time.monotonic() - start)
        trainer.strategy.barrier()


# Lightning private members this module still uses (tests/test_lightning_private_members.py fails when one goes;
# checked with Lightning 2.6.6): ``Trainer._logger_connector.update_train_step_metrics`` hands a step's logged
# metrics to the loggers. Lightning does that only after ``on_train_batch_end``, and it has no public call that
# flushes the current step's logged metrics early, which a pre-emption exit at a step's end needs.
TRAINER_PRIVATE_MEMBERS = ("_logger_connector.update_train_step_metrics",)


class ResumableCheckpoint(Checkpoint, StopSaver):
    """Periodic checkpoints from which a run resumes exactly (``python train.py fit ... --ckpt_path last``).

    - Saved every ``every_n_train_steps`` optimizer steps, at the end of every training epoch, and when training
      ends, as ``<dirpath>/step=<global step>.ckpt``. An epoch's last step is saved by the epoch end instead (also a
      stop requested at that step), so a resume never skips that epoch's validation, nor the following epochs (the
      data loader's state at the last batch is at the end of its data).
    - Atomic: every rank writes into ``.tmp-step=....ckpt``; after a barrier rank 0 renames it into place. A crash
      mid-save leaves only the hidden temporary (removed at the next start) and the previous checkpoint stays valid.
    - ``last.ckpt`` is a relative symlink to the newest complete checkpoint, switched atomically after publishing.
    - Rotation: the ``keep_last`` newest stay; their list is in the checkpoint, so a resumed run goes on rotating
      them (the one it resumed from included). A checkpoint rotated out is deleted after ``last`` points at the new
      one, so with ``keep_last: 1`` a crash never leaves ``last`` dangling. (``CheckpointDirectory`` does the
      saving; this callback decides when. Lightning's ``Checkpoint`` base class makes the trainer treat it as its
      checkpoint callback: run last among callbacks, no default ``ModelCheckpoint`` added.)
    - Randomness: with ``reseed_every_step`` the Python, NumPy and torch (CPU and CUDA) generators are re-seeded at
      the start of every optimizer step from (seed, step, global rank), so a resumed run draws the same random
      numbers as an uninterrupted one without storing generator states (also at epoch boundaries, where the data
      loader draws a seed of its own when its iterator is created).
    - Everything else that resumes (model, optimizer, LR scheduler, loop counters and the data loader position,
      callback states such as evaluation history) is in the checkpoint through Lightning.

    - Epoch-end evaluations (``EpochEndEvaluation``: ``SkillEvalCallback``, ``ReselectionCallback``'s re-profile) are
      preceded by a checkpoint of the trained weights whose callback states mark them pending
      (``save_before_evaluations``); the epoch-end save after them replaces it with one where nothing is pending. A
      run killed during an evaluation resumes from the first: it runs the pending evaluations (same tags, reports and
      re-selection) and goes on with the next epoch, instead of training the epoch again. What the killed attempt had
      logged of them at that step is dropped first (``resume_logs``), so each appears once in the history.
    - A failed save (e.g. a full disk) removes its temporary and stops the run with one line naming the directory
      and the space a checkpoint needs; the previous checkpoint stays the resume point.
    - The trainer settings a resume may not change (epochs, steps, accumulation) are kept in this callback's state
      (``run_settings``); train.py compares them, and the module's and data's hyperparameters, before resuming.

    Checkpoints go to the run directory's ``checkpoints/`` (``RunLayout.checkpoints``; on multi-node runs the run
    directory is on a shared filesystem: every rank writes its shard there), where ``--ckpt_path last`` looks.

    Args:
        every_n_train_steps: save every N optimizer steps (0: only at epoch ends and at the end).
        keep_last: number of step checkpoints kept (at least 1).
        save_on_epoch_end: also save at the end of every training epoch.
        reseed_every_step: re-seed the random generators at every optimizer step (see above).
        seed: base seed of that re-seeding (default: the ``seed_everything`` value, else 0).
    """

    def __init__(self, every_n_train_steps: int = 50, keep_last: int = 2,
                 save_on_epoch_end: bool = True, reseed_every_step: bool = True, seed: int | None = None):
        if keep_last < 1:
            raise ConfigError(f"ResumableCheckpoint.keep_last must be >= 1, got {keep_last}")
        if every_n_train_steps < 0:
            raise ConfigError(f"ResumableCheckpoint.every_n_train_steps must be >= 0, got {every_n_train_steps}")
        self.every_n_train_steps = every_n_train_steps
        self.keep_last = keep_last
        self.save_on_epoch_end = save_on_epoch_end
        self.reseed_every_step = reseed_every_step
        self.seed = seed
        self.run_settings: dict = {}
        self.directory: CheckpointDirectory | None = None  # set in setup (the run directory is known then)
        self.dirpath: str | None = None
        self.last_model_path = ""  # the newest checkpoint this run saved (as on ModelCheckpoint, for loggers)
        self._kept: list[str] = []  # restored before setup when resuming
        self._last_step_saved = -1
        self._saved_before_evaluations: tuple[int, int] | None = None  # (epoch, step) of this epoch end's pending save
        self._logs_cut = False

    # ---- checkpointed state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"kept": list(self.directory.kept if self.directory else self._kept), "run_settings": self.run_settings}

    def load_state_dict(self, state_dict: dict) -> None:
        self._kept = list(state_dict.get("kept", []))
        if self.directory is not None:
            self.directory.kept = list(self._kept)

    # ---- hooks ----------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        self._logs_cut = False
        self.directory = CheckpointDirectory(RunLayout.of(trainer), self.keep_last)
        self.directory.kept = list(self._kept)
        self.dirpath = str(self.directory.dirpath)
        others = [type(cb).__name__ for cb in trainer.checkpoint_callbacks if cb is not self]
        if others:
            raise ConfigError(f"trainer.callbacks has {', '.join(others)} besides ResumableCheckpoint: every "
                              "checkpoint would be written twice; keep only "
                              "callbacks.checkpointing.ResumableCheckpoint")
        global_seed = os.environ.get("PL_GLOBAL_SEED")  # what seed_everything set (absent: no seeding)
        self.run_settings = {"max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps,
                             "accumulate_grad_batches": trainer.accumulate_grad_batches,
                             "precision": str(trainer.precision),
                             "seed_everything": int(global_seed) if global_seed is not None else None}
        # checkpoints load with torch.load(weights_only=True); hyperparameters and callback states hold the
        # project's dataclasses (CorpusFields, SkillFormat, ...), which are allow-listed, nothing else
        candidates = [self.directory.last]
        if trainer.ckpt_path:
            candidates.append(Path(trainer.ckpt_path))
        allow_project_classes(trainer, pl_module, candidates)
        self.directory.remove_leftovers(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path:  # the checkpoint we resumed from is this step's: do not write it again
            self._last_step_saved = trainer.global_step
            self.resume_logs(trainer)

    def resume_logs(self, trainer) -> None:
        """Once per resumed fit, before anything is redone: drop what the earlier attempt logged after the checkpoint
        (``cut_logs_to_checkpoint``). The evaluation callbacks call it before redoing a pending evaluation, which
        happens in their ``on_train_start`` (before this callback's, which Lightning runs last) or, resumed at the
        last epoch's end, in their ``on_fit_end``."""
        if trainer.ckpt_path and not self._logs_cut:
            self._logs_cut = True
            cut_logs_to_checkpoint(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.reseed_every_step and batch_idx % trainer.accumulate_grad_batches == 0:
            base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
            s = step_seed(base, trainer.global_step, trainer.global_rank)
            random.seed(s)
            np.random.seed(s % 2**32)
            torch.manual_seed(s)  # seeds every CUDA device too

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # runs after every non-checkpoint callback's hook (Lightning orders checkpoint callbacks last), so a
        # checkpoint here includes whatever they recorded for this step
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        step_closed = (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or last_batch
        if not step_closed:
            return
        if last_batch:
            # the epoch end saves (and stops) instead: a checkpoint taken here holds the data loader's position at
            # the end of its data, so a run resumed from it would start the next epoch on an exhausted loader,
            # find no batch and count every remaining epoch as done
            return
        if self._step_save_due(trainer):
            self.save(trainer)
        self._stop_if_requested(trainer, at_step_end=True)

    def _step_save_due(self, trainer) -> bool:
        n = self.every_n_train_steps
        return n >= 1 and trainer.global_step % n == 0  # (save() skips a step already saved)

    def save_before_evaluations(self, trainer) -> str | None:
        """At an epoch end, before its first evaluation (a collective: every ``EpochEndEvaluation`` calls it first
        thing in its ``on_train_epoch_end``, on every rank): every evaluation due now is marked pending
        (``mark_pending_at_epoch_end``) and the trained weights are checkpointed with those marks. Once per epoch end;
        the epoch-end save then replaces this checkpoint. Returns its path (None: nothing due, or no epoch-end saves).

        Placed before every epoch-end callback without the marks, the checkpoint would make a resumed run skip the
        evaluations (nothing would say they are still to run), the re-profile and its re-selection included."""
        key = (trainer.current_epoch, trainer.global_step)
        if not self.save_on_epoch_end or self._saved_before_evaluations == key:
            return None
        self._saved_before_evaluations = key
        due = [cb for cb in trainer.callbacks
               if isinstance(cb, EpochEndEvaluation) and cb.mark_pending_at_epoch_end(trainer)]
        if not due:
            return None
        path = self.save(trainer, again=True)
        if path and trainer.is_global_zero:
            log.info("checkpoint of the trained weights before the epoch-end evaluations (%s pending): %s",
                     ", ".join(type(cb).__name__ for cb in due), path)
        return path

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.save_on_epoch_end or self._step_save_due(trainer):
            # replaces this step's checkpoint taken before the evaluations: nothing is pending now
            self.save(trainer, again=self._saved_before_evaluations == (trainer.current_epoch, trainer.global_step))
        # a signal that came during this epoch's end (an evaluation) stops here, on the weights it recorded as
        # pending; after the last epoch the run finishes instead (final checkpoint and export in on_train_end)
        if not is_final_epoch(trainer):
            self._stop_if_requested(trainer)

    def _stop_if_requested(self, trainer, at_step_end: bool = False) -> None:
        """A collective at a step or epoch boundary: if any rank got a stop signal, save and exit on every rank."""
        for cb in trainer.callbacks:
            if isinstance(cb, PreemptionCallback) and cb.stop_agreed(trainer):
                self.save(trainer)
                # Lightning hands a step's metrics to the loggers only after this hook: the process leaves before
                # that, and a resume starts after this step, so its row would be missing from the history
                if at_step_end:
                    trainer._logger_connector.update_train_step_metrics()  # private: see TRAINER_PRIVATE_MEMBERS
                for logger in trainer.loggers:
                    logger.save()
                cb.exit(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer)

    # ---- saving ---------------------------------------------------------------------------------------
    def save(self, trainer, again: bool = False) -> str | None:
        """Save the current step now (a collective: every rank calls), publish it, point ``last`` at it, rotate.
        Returns the checkpoint path (None if this step is already saved or nothing may be saved now).
        ``again``: replace a checkpoint of this step already written (the callback states changed since)."""
        from lightning.pytorch.trainer.states import TrainerFn

        if ((self._last_step_saved == trainer.global_step and not again) or trainer.fast_dev_run
                or trainer.sanity_checking
                or trainer.state.fn != TrainerFn.FITTING):
            return None
        path = self.directory.save(trainer)
        self._last_step_saved = trainer.global_step
        self.last_model_path = str(path)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
        return self.last_model_path
