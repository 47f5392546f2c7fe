"""One owner of the run directory's layout (skill_distill/run_layout.py): its paths, and that nothing else spells
them."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

from callbacks.reselection import ReselectionCallback
from callbacks.skill_eval import SkillEvalCallback
from skill_distill.io import ConfigError
from skill_distill.run_layout import RunLayout

REPO = Path(__file__).resolve().parents[1]


def test_the_layout_names_every_path_of_a_run_directory(tmp_path):
    layout = RunLayout(tmp_path / "run")
    assert layout.checkpoints == tmp_path / "run" / "checkpoints"
    assert layout.last_checkpoint == tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert layout.manifest == tmp_path / "run" / "selection_manifest.json"
    assert layout.selection_for_epoch(3) == tmp_path / "run" / "selection" / "epoch=3.json"
    assert layout.metrics_csv == tmp_path / "run" / "logs" / "metrics.csv"
    assert layout.final_export == tmp_path / "run" / "hf_export" / "final"
    assert layout.step_trace(1) == tmp_path / "run" / "step_trace.rank1.jsonl"
    assert layout.finished == tmp_path / "run" / "run_finished.json"
    assert RunLayout.report(layout.eval_dir, "baseline") == tmp_path / "run" / "eval" / "baseline" / "report.json"
    assert layout.inside("mine", layout.eval_dir) == tmp_path / "run" / "mine"
    assert layout.inside(None, layout.eval_dir) == layout.eval_dir
    assert layout.inside(str(tmp_path / "abs"), layout.eval_dir) == tmp_path / "abs"


def test_earlier_outputs_and_the_trained_selection(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.earlier_run_outputs() == []
    layout.checkpoints.mkdir()  # an empty directory is no output
    layout.eval_dir.mkdir()
    assert layout.earlier_run_outputs() == []
    (layout.eval_dir / "x").write_text("")
    layout.manifest.write_text("{}")
    assert layout.earlier_run_outputs() == ["eval", "selection_manifest.json"]
    assert layout.trained_selection(2) == layout.manifest  # no re-selection record: the manifest
    layout.selection_dir.mkdir()
    layout.selection_for_epoch(2).write_text("{}")
    assert layout.trained_selection(2) == layout.selection_for_epoch(2)
    assert layout.trained_selection(1) == layout.manifest


def test_relative_report_directories_lie_inside_the_run_directory(tmp_path, monkeypatch):
    """Bug on the earlier tree: ReselectionCallback resolved a relative ``dirpath`` against the current directory."""
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    trainer = L.Trainer(default_root_dir=str(tmp_path / "run"), logger=False, accelerator="cpu", devices=1,
                        enable_progress_bar=False, enable_checkpointing=False)
    run = tmp_path / "run"
    assert SkillEvalCallback(benchmarks=[], dirpath="reports").reports_dir(trainer) == run / "reports"
    assert ReselectionCallback(dirpath="reports").reports_dir(trainer) == run / "reports" / "reprofile"
    assert ReselectionCallback().reports_dir(trainer) == run / "eval" / "reprofile"
    assert SkillEvalCallback(benchmarks=[], dirpath=str(tmp_path / "abs")).reports_dir(trainer) == tmp_path / "abs"


# a run directory's names, as code would spell them when joining paths itself
SPELLED = [r"selection_manifest\.json", r"run_finished", r"step_trace\.rank\{", r"""["']selection["']\s*/""",
           r"""/\s*\(?["'](checkpoints|hf_export|selection|logs/metrics\.csv)["']""",
           r"""(root|run_dir|run|default_root_dir\)?)\s*/\s*\(?["']eval["']"""]


def test_nothing_but_the_layout_spells_a_run_directory_path():
    sources = [p for d in ("skill_distill", "callbacks", "datamodules", "lightning_modules", "experiments")
               for p in (REPO / d).rglob("*.py")] + [REPO / "train.py"]
    found = []
    for path in sources:
        if path.name == "run_layout.py":
            continue
        code = [line for line in path.read_text(encoding="utf-8").splitlines()
                if not line.lstrip().startswith(("#", '"""')) and "``" not in line]  # docstrings may name them
        for pattern in SPELLED:
            found += [f"{path.relative_to(REPO)}: {line.strip()}" for line in code if re.search(pattern, line)]
    assert len(sources) > 40 and not found, "run-directory paths spelled outside RunLayout:\n" + "\n".join(found)


def test_one_run_holds_a_run_directory_and_a_stale_hold_is_taken_over(tmp_path):
    layout = RunLayout(tmp_path / "run")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        layout.root.mkdir()
        held = {"host": socket.gethostname(), "pid": other.pid, "started": "2026-12-06T05:00:00+0000"}
        layout.lock.write_text(json.dumps(held))
        with pytest.raises(ConfigError) as e:  # a live run on this host
            layout.hold()
        line = str(e.value)
        assert f"pid {other.pid} on {socket.gethostname()} (started 2026-12-06T05:00:00+0000)" in line
        assert "\n" not in line and layout.holder() == held
        layout.release()  # not ours: kept
        assert layout.holder() == held
    finally:
        other.kill()
        other.wait()
    assert layout.hold() == held  # its process is gone: taken over
    assert layout.holder()["pid"] == os.getpid()
    assert layout.hold() is None  # holding it again from the same process
    layout.release()
    assert not layout.lock.exists() and layout.hold() is None
    layout.release()
    elsewhere = {"host": "another-node", "pid": 1, "started": "x"}  # another host's pid cannot be checked: refused
    layout.lock.write_text(json.dumps(elsewhere))
    with pytest.raises(ConfigError, match="pid 1 on another-node"):
        layout.hold()


@pytest.mark.slow
def test_a_second_run_into_a_held_run_directory_is_refused(tmp_path, monkeypatch):
    """Bug on the earlier tree: ``--ckpt_path last`` into a directory whose first run had no checkpoint yet started
    a second run beside it."""
    import train

    run = tmp_path / "run"
    run.mkdir()
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": first.pid, "started": "t0"}))
        monkeypatch.chdir(REPO)
        monkeypatch.setattr(sys, "argv", ["train.py"])  # LightningCLI warns when it gets both args and pytest's
        with pytest.raises(ConfigError, match=f"held by the run of pid {first.pid}"):
            train.main(["fit", "--config", "configs/quickstart.yaml", f"--trainer.default_root_dir={run}",
                        "--ckpt_path", "last"])  # refused before any class is built
    finally:
        first.kill()
        first.wait()
