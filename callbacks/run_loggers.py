"""Loggers that live inside the run directory and keep a resumed run's history.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when a run starts in its directory (resumed runs included:
"Previous log files in this directory will be deleted"), so every requeue lost the history; ``RunCSVLogger`` appends
to it instead (same columns; a new column rewrites the file atomically with the union header). A resumed run first
drops the rows written after the checkpoint it starts from (``RunCSVLogger.resume_at``), so no step appears twice.
"""

from __future__ import annotations

import csv
import logging

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from skill_distill.io import ConfigError, atomic_write

log = logging.getLogger(__name__)


TRAINING_STEP_PREFIXES = ("train/", "lr-")
"""Metric names an optimizer step logs (the module's ``train/...``, LearningRateMonitor's ``lr-...``)."""


class AppendingExperimentWriter(ExperimentWriter):
    """CSVLogger's writer without the deletion of an earlier ``metrics.csv``: rows are appended to it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):  # continue with the earlier run's columns
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)

    def drop_rows_after(self, step: int, redone_prefixes: tuple[str, ...] = ()) -> int:
        """Remove the rows written after the checkpoint of optimizer step ``step`` (a resume redoes them): those of
        a later step, and at ``step`` itself those of a training step (``train/...``, LearningRateMonitor's
        ``lr-...``: Lightning logs optimizer step k+1 at step k) and those of the evaluations the checkpoint marks
        pending (metrics starting with one of ``redone_prefixes``: an attempt killed after one finished logged it
        after the checkpoint taken before it). The other epoch-end rows of ``step`` (validation, evaluations),
        logged before its checkpoint, stay. Rows not yet written (this run's) are kept. Returns the number of rows
        removed; the file is rewritten atomically."""
        if not self._fs.isfile(self.metrics_file_path):
            return 0
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            header, rows = list(reader.fieldnames or []), list(reader)

        def redone(row: dict) -> bool:
            try:
                row_step = int(float(row.get("step") or ""))
            except ValueError:
                return False
            return row_step > step or (row_step == step and any(
                value not in (None, "") and key.startswith(TRAINING_STEP_PREFIXES + redone_prefixes)
                for key, value in row.items()))

        kept = [row for row in rows if not redone(row)]
        if len(kept) < len(rows):
            with atomic_write(self.metrics_file_path) as f:  # a crash keeps the old file whole
                writer = csv.DictWriter(f, fieldnames=header)
                writer.writeheader()
                writer.writerows(kept)
        return len(rows) - len(kept)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            rows = list(csv.DictReader(f))
        with atomic_write(self.metrics_file_path) as f:  # a crash keeps the old file whole
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


def _save_dir(save_dir: str | None, cls: str) -> str:
    if not save_dir:
        raise ConfigError(f"{cls}.save_dir is not set: train.py sets it to trainer.default_root_dir; set it when "
                          "building the Trainer yourself")
    return save_dir


class RunCSVLogger(CSVLogger):
    """``<save_dir>/<name>/metrics.csv`` (and ``hparams.yaml``), appended across resumptions, flushed whenever a
    checkpoint is saved (so the history on disk always reaches the checkpoint a resume starts from).

    Args:
        save_dir: default: the run directory (``trainer.default_root_dir``, filled in by train.py).
        name: the sub-directory.
        flush_logs_every_n_steps: also write buffered rows every N steps.
    """

    def __init__(self, save_dir: str | None = None, name: str = "logs", flush_logs_every_n_steps: int = 10):
        super().__init__(_save_dir(save_dir, "RunCSVLogger"), name=name, version="",
                         flush_logs_every_n_steps=flush_logs_every_n_steps)
        self._flush_next_row = False  # set by a checkpoint save: the next row is written at once

    @property
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    def resume_at(self, step: int, redone_prefixes: tuple[str, ...] = ()) -> None:
        """A resumed run starts after the checkpoint of optimizer step ``step``: drop the rows an earlier attempt
        wrote after it (it was killed later), those of the pending evaluations it redoes included
        (``redone_prefixes``), so that no step or evaluation appears twice (``ResumableCheckpoint`` calls this on
        rank 0 before the first step or redone evaluation logs)."""
        dropped = self.experiment.drop_rows_after(step, tuple(redone_prefixes))
        if dropped:
            log.info("%s: dropped %d rows written after the checkpoint of step %d (they are redone)",
                     self.experiment.metrics_file_path, dropped, step)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.save()
        # the checkpointed step's own row reaches the logger only after the checkpoint hook (Lightning logs a step's
        # metrics after on_train_batch_end); it is written as soon as it arrives, so a kill -9 before the next
        # periodic flush cannot leave a gap between the history on disk and the step a resume starts after
        self._flush_next_row = True

    def log_metrics(self, metrics, step=None) -> None:
        super().log_metrics(metrics, step)
        if self._flush_next_row:
            self._flush_next_row = False
            self.save()


class RunTensorBoardLogger(TensorBoardLogger):
    """TensorBoard events in ``<save_dir>/<name>/`` (a resumed run adds an event file beside the earlier ones).

    Args:
        save_dir: default: the run directory (``trainer.default_root_dir``, filled in by train.py).
        name: the sub-directory.
    """

    def __init__(self, save_dir: str | None = None, name: str = "tb"):
        super().__init__(_save_dir(save_dir, "RunTensorBoardLogger"), name=name, version="")


__all__ = ["RunCSVLogger", "RunTensorBoardLogger"]
