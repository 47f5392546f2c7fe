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
      run.lock                the run that holds the directory now (host, pid, start time)
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from skill_distill.io import ConfigError


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

    # ---- one run at a time -------------------------------------------------------------------------------------
    @property
    def lock(self) -> Path:
        """``run.lock``: which process holds the run directory (``hold``)."""
        return self.root / "run.lock"

    def holder(self) -> dict | None:
        """The hold recorded in ``run.lock`` (``{"host", "pid", "started"}``), None when there is none."""
        try:
            return json.loads(self.lock.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: a hold cut off while being written, by a run that was killed then

    def hold(self) -> dict | None:
        """Take the run directory for this process (``run.lock``: host, pid, start time), so that a second run
        started into it (a double-submitted or requeued job) is refused instead of training beside the first.

        Raises ConfigError (one line naming the holder) when another process holds it: a live pid on this host,
        or any process on another host (its pid cannot be checked from here). A hold whose process is gone on this
        host is stale and taken over; it is returned (else None). Holding it again from the same process is a
        no-op."""
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.root.mkdir(parents=True, exist_ok=True)
        taken = None
        while True:
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:  # released meanwhile
                    continue
                if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
                    return None
                if holder and (holder.get("host") != me["host"] or _alive(holder.get("pid"))):
                    raise ConfigError(
                        f"{self.root} is held by the run of pid {holder.get('pid')} on {holder.get('host')} (started "
                        f"{holder.get('started')}): wait for it to end, or use another --trainer.default_root_dir; if "
                        f"that run is gone (e.g. its node died), delete {self.lock}") from None
                taken = holder
                self.lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            return taken

    def release(self) -> None:
        """Give the run directory up, if this process holds it."""
        holder = self.holder()
        if holder and holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid():
            self.lock.unlink(missing_ok=True)

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


def _alive(pid) -> bool:
    """Whether a process of this host runs with ``pid``."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
