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
import uuid
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.distributed.checkpoint.api import CheckpointException

from callbacks.preemption import PreemptionCallback, StopSaver, is_final_epoch
from skill_distill.io import ConfigError, DataError
from skill_distill.run_layout import RunLayout

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"


def _root_cause(error: BaseException) -> BaseException:
    """The first underlying exception of a wrapped one (DCP wraps a rank's OSError with its traceback)."""
    while True:
        inner = error.__cause__ or error.__context__
        if inner is None or isinstance(error, OSError):
            return error
        error = inner


def cut_logs_to_checkpoint(trainer) -> None:
    """A resumed run redoes the steps after its checkpoint (``trainer.global_step`` once restored): loggers that
    can (``RunCSVLogger.resume_at``) drop what an earlier attempt logged after it, before the first step logs."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            if callable(getattr(logger, "resume_at", None)):
                logger.resume_at(trainer.global_step)


def remove_path(path: Path) -> None:
    """Delete a checkpoint (file, directory or symlink) so that a crash never leaves a half-deleted one that looks
    valid: rename it to a hidden trash name first, then delete."""
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def publish(tmp: Path, final: Path) -> None:
    """Move a fully written checkpoint ``tmp`` to ``final`` (replacing an older one of the same name)."""
    if final.exists() or final.is_symlink():
        remove_path(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def point_link(link: Path, target: Path) -> None:
    """Make ``link`` a relative symlink to ``target``, switched atomically (readers see the old or the new one)."""
    tmp = link.with_name(f"{TMP_PREFIX}{link.name}-{uuid.uuid4().hex[:8]}")
    os.symlink(os.path.relpath(target, link.parent), tmp)
    if link.is_dir() and not link.is_symlink():  # a real directory (e.g. written by stock ModelCheckpoint)
        remove_path(link)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def step_seed(base: int, step: int, rank: int) -> int:
    """A seed that depends only on (base seed, optimizer step, global rank)."""
    return int(np.random.SeedSequence([base, step, rank]).generate_state(1)[0])


# ModelCheckpoint's private members this class overrides (_save_checkpoint, _link_checkpoint, _remove_checkpoint,
# _should_remove_checkpoint), calls (_save_topk_checkpoint, _save_last_checkpoint) or reads
# (_should_skip_saving_checkpoint, _monitor_candidates, _every_n_train_steps, _last_global_step_saved,
# _last_checkpoint_saved): checked with Lightning 2.6.6; tests/test_lightning_private_members.py fails when one goes.
MODEL_CHECKPOINT_PRIVATE_MEMBERS = ("_save_checkpoint", "_link_checkpoint", "_remove_checkpoint",
                                    "_should_remove_checkpoint", "_save_topk_checkpoint", "_save_last_checkpoint",
                                    "_should_skip_saving_checkpoint", "_monitor_candidates", "_every_n_train_steps",
                                    "_last_global_step_saved", "_last_checkpoint_saved")


class ResumableCheckpoint(ModelCheckpoint, StopSaver):
    """Periodic checkpoints from which a run resumes exactly (``python train.py fit ... --ckpt_path last``).

    - Saved every ``every_n_train_steps`` optimizer steps, at the end of every training epoch, and when training
      ends, as ``<dirpath>/step=<global step>.ckpt``. An epoch's last step is saved by the epoch end instead (also a
      stop requested at that step), so a resume never skips that epoch's validation, nor the following epochs (the
      data loader's state at the last batch is at the end of its data).
    - Atomic: every rank writes into ``.tmp-step=....ckpt``; after a barrier rank 0 renames it into place. A crash
      mid-save leaves only the hidden temporary (removed at the next start) and the previous checkpoint stays valid.
    - ``last.ckpt`` is a relative symlink to the newest complete checkpoint, switched atomically after publishing.
    - Rotation is ModelCheckpoint's own top-k (``save_top_k=keep_last`` on ``monitor="step", mode="max"``: the
      ``keep_last`` newest stay, their list is in the checkpoint, so a resumed run goes on rotating them). Only the
      order is ours: the checkpoint top-k drops is deleted after ``last`` points at the new one, so with
      ``keep_last: 1`` a crash never leaves ``last`` dangling.
    - Randomness: with ``reseed_every_step`` the Python, NumPy and torch (CPU and CUDA) generators are re-seeded at
      the start of every optimizer step from (seed, step, global rank), so a resumed run draws the same random
      numbers as an uninterrupted one without storing generator states (also at epoch boundaries, where the data
      loader draws a seed of its own when its iterator is created).
    - Everything else that resumes (model, optimizer, LR scheduler, loop counters and the data loader position,
      callback states such as evaluation history) is in the checkpoint through Lightning.

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
        super().__init__(dirpath=None, filename="step={step:07d}", auto_insert_metric_name=False,
                         monitor="step", mode="max", save_top_k=keep_last, save_last="link",
                         every_n_train_steps=every_n_train_steps or None,
                         every_n_epochs=0, save_on_train_epoch_end=True,  # epoch ends: our own hook
                         enable_version_counter=False)
        self.keep_last = keep_last
        self._dropped: list[str] = []  # checkpoints top-k let go during the current save
        self.save_on_epoch_end = save_on_epoch_end
        self.reseed_every_step = reseed_every_step
        self.seed = seed
        self.run_settings: dict = {}

    # ---- checkpointed state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "run_settings": self.run_settings}

    def load_state_dict(self, state_dict: dict) -> None:
        # a run directory that moved (copied to another disk, renamed) goes on rotating its checkpoints: Lightning
        # restores top-k's list only when the saved dirpath is the current one, and would keep the others forever
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            def moved(path):
                if path and Path(path).is_relative_to(old):
                    return str(Path(self.dirpath) / Path(path).relative_to(old))
                return path

            state_dict = {**state_dict, "dirpath": self.dirpath,
                          "best_k_models": {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()},
                          **{key: moved(state_dict.get(key)) for key in
                             ("best_model_path", "kth_best_model_path", "last_model_path")}}
        super().load_state_dict(state_dict)

    # ---- hooks ----------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        self.dirpath = str(RunLayout.of(trainer).checkpoints)
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
        super().setup(trainer, pl_module, stage)
        # checkpoints load with torch.load(weights_only=True); hyperparameters and callback states hold the
        # project's dataclasses (CorpusFields, SkillFormat, ...), which are allow-listed, nothing else
        candidates = [Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"] if self.dirpath else []
        if trainer.ckpt_path:
            candidates.append(Path(trainer.ckpt_path))
        allow_project_classes(trainer, pl_module, candidates)
        if trainer.is_global_zero and self.dirpath and Path(self.dirpath).is_dir():
            for leftover in Path(self.dirpath).iterdir():  # an interrupted save or delete of an earlier run
                if leftover.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                    log.info("removing incomplete checkpoint %s", leftover)
                    if leftover.is_dir() and not leftover.is_symlink():
                        shutil.rmtree(leftover, ignore_errors=True)
                    else:
                        leftover.unlink(missing_ok=True)
        trainer.strategy.barrier()

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.ckpt_path:  # the checkpoint we resumed from is this step's: do not write it again
            self._last_global_step_saved = trainer.global_step
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
        n = self._every_n_train_steps
        return n >= 1 and trainer.global_step % n == 0 and not self._should_skip_saving_checkpoint(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if (self.save_on_epoch_end and not self._should_skip_saving_checkpoint(trainer)) \
                or self._step_save_due(trainer):
            self.save(trainer)
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
                    trainer._logger_connector.update_train_step_metrics()
                for logger in trainer.loggers:
                    logger.save()
                cb.exit(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        pass  # saving is driven by steps and epochs only

    def on_exception(self, trainer, pl_module, exception) -> None:
        pass  # a failing run's state is suspect; the last published checkpoint stays the resume point

    def on_train_end(self, trainer, pl_module) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self.save(trainer)

    # ---- saving ---------------------------------------------------------------------------------------
    def save(self, trainer) -> str | None:
        """Save the current step now (a collective: every rank calls), publish it, point ``last`` at it, rotate.
        Returns the checkpoint path (None if this step is already saved)."""
        if self._last_global_step_saved == trainer.global_step:
            return None
        candidates = self._monitor_candidates(trainer)
        self._dropped = []
        self._save_topk_checkpoint(trainer, candidates)  # saves; top-k names the one it drops (_remove_checkpoint)
        self._save_last_checkpoint(trainer, candidates)  # save_last="link": last -> the new checkpoint
        if trainer.is_global_zero:
            for path in self._dropped:
                remove_path(Path(path))
        trainer.strategy.barrier()
        return self._last_checkpoint_saved

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        final = Path(filepath)
        tmp = final.with_name(TMP_PREFIX + final.name)
        if trainer.is_global_zero:
            final.parent.mkdir(parents=True, exist_ok=True)
            if tmp.exists() or tmp.is_symlink():
                remove_path(tmp)
        trainer.strategy.barrier()
        error: BaseException | None = None
        try:
            trainer.save_checkpoint(str(tmp), self.save_weights_only)  # ends with a barrier: every shard is written
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
            publish(tmp, final)
            log.info("saved checkpoint %s", final)
        trainer.strategy.barrier()
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            from weakref import proxy

            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    @staticmethod
    def _link_checkpoint(trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            point_link(Path(linkpath), Path(filepath))
        trainer.strategy.barrier()

    def _should_remove_checkpoint(self, trainer, previous: str, current: str) -> bool:
        # Lightning never removes the checkpoint a run resumed from: a pre-empted run resumed N times would keep N
        # checkpoints beyond keep_last (98 GB each for Qwen3-8B with AdamW). Inside our directory it rotates too.
        return previous != current and Path(self.dirpath).absolute() in Path(previous).absolute().parents

    def _remove_checkpoint(self, trainer, filepath: str) -> None:
        self._dropped.append(filepath)  # deleted by save() once `last` no longer points at it
