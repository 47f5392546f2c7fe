"""The layout of a training run directory (``trainer.default_root_dir``): the one place that spells its paths.

Every reader and writer of a run directory (train.py, the callbacks, the data module, the model card, the CPU
experiment) asks a ``RunLayout`` for a path instead of joining names itself, so the layout changes in one place.
Plain paths only (no Lightning): ``RunLayout.of(trainer)`` just reads ``trainer.default_root_dir``.

    <run dir>/
      checkpoints/            step=<k>.ckpt, last.ckpt (ResumableCheckpoint)
      selection_manifest.json the selection epoch 0 trains on (SkillDataModule)
      selection/epoch=<k>.json  a re-selected epoch's ids and profile (closed loop), selection/epochs.png
      eval/<tag>/report.json  in-training evaluations (SkillEvalCallback; eval/reprofile/ for the closed loop)
      logs/metrics.csv, tb/   loggers
      hf_export/final/        HF exports (HFExportCallback)
      step_trace.rank<r>.jsonl  per-step traces (StepTraceCallback)
      run_finished.json       written when fit ends normally
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run directory. ``root`` is the run directory; nothing is created or read here."""

    root: Path

    MANIFEST = "selection_manifest.json"
    FINISHED = "run_finished.json"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, trainer) -> RunLayout:
        """The layout of a trainer's run directory (``trainer.default_root_dir``)."""
        return cls(Path(trainer.default_root_dir))

    def inside(self, setting: str | os.PathLike | None, default: Path) -> Path:
        """A callback's path setting: a relative one lies inside the run directory, an absolute one is kept, None
        is ``default`` (one of this layout's paths)."""
        return self.root / setting if setting else default  # joining an absolute path keeps it

    # ---- checkpoints -------------------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        """``checkpoints/last.ckpt``: a link to the newest complete checkpoint."""
        return self.checkpoints / "last.ckpt"

    # ---- selection ---------------------------------------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        """The selection manifest: what epoch 0 trains on (reused on resume)."""
        return self.root / self.MANIFEST

    @property
    def selection_dir(self) -> Path:
        return self.root / "selection"

    def selection_for_epoch(self, epoch: int) -> Path:
        """``selection/epoch=<k>.json``: the record of an epoch the closed loop re-selected (epoch 0's is the
        manifest)."""
        return self.selection_dir / f"epoch={epoch}.json"

    def trained_selection(self, epoch: int) -> Path:
        """The file naming what ``epoch`` trained on: its re-selection record when there is one, else the manifest."""
        record = self.selection_for_epoch(epoch)
        return record if epoch > 0 and record.is_file() else self.manifest

    @property
    def selection_chart(self) -> Path:
        return self.selection_dir / "epochs.png"

    # ---- evaluations, logs, exports, traces -------------------------------------------------------------------
    @property
    def eval_dir(self) -> Path:
        """Default directory of in-training evaluations (``eval/<tag>/report.json``)."""
        return self.root / "eval"

    @staticmethod
    def report(eval_dir: Path, tag: str) -> Path:
        """The report of the evaluation ``tag`` (``baseline``, ``epoch=<k>``) in an evaluation directory."""
        return Path(eval_dir) / tag / "report.json"

    def evaluation_reports(self) -> list[Path]:
        """Every evaluation report of the run (``eval*/<tag>/report.json``: each evaluation callback has its own
        ``eval...`` directory)."""
        return sorted(self.root.glob("eval*/*/report.json"))

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def metrics_csv(self) -> Path:
        return self.logs / "metrics.csv"

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def hf_export(self) -> Path:
        return self.root / "hf_export"

    @property
    def final_export(self) -> Path:
        return self.hf_export / "final"

    def step_trace(self, rank: int | str = "{rank}") -> Path:
        """``step_trace.rank<r>.jsonl`` (the default ``{rank}`` leaves a pattern to format)."""
        return self.root / f"step_trace.rank{rank}.jsonl"

    @property
    def finished(self) -> Path:
        """Written when ``fit`` ends normally (the run's summary); a resume of a finished run is a no-op."""
        return self.root / self.FINISHED

    # ---- what an earlier run left -------------------------------------------------------------------------------
    def run_outputs(self) -> dict[str, Path]:
        """What a run leaves behind, by name (the saved config alone is not a run: LightningCLI writes it before
        training)."""
        return {"checkpoints": self.checkpoints, "logs/metrics.csv": self.metrics_csv, "tb": self.tb,
                "eval": self.eval_dir, "hf_export": self.hf_export, self.MANIFEST: self.manifest,
                self.FINISHED: self.finished}

    def earlier_run_outputs(self) -> list[str]:
        """The outputs of an earlier run found here (empty: a new or empty directory)."""
        return [name for name, p in self.run_outputs().items()
                if p.is_file() or (p.is_dir() and any(p.iterdir()))]
