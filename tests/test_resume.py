"""Interrupted-then-resumed training equals uninterrupted training: same samples per rank in the same order, same
losses (fp32, to 1e-6), same learning rates, same random draws. Single process (resumed mid-epoch) and 2-rank DDP
(padded batches, through train.py's resume hand-off to the launched rank). The FSDP2 cases (sharded and full
checkpoints, crash mid-save, 2 -> 1 ranks, 2-node SIGTERM) are in tests/test_fsdp2.py. Plus the checkpoint file
mechanics (atomic publish, ``last`` link, rotation)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
import launch

STEPS = 8  # 16 examples, 4 per step, 2 epochs


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_dir, qwen_tokenizer_dir):
    root = tmp_path_factory.mktemp("resume")
    common = {"corpus": launch.write_short_corpus(shared_dir, root / "corpus.jsonl"), "tokenizer": qwen_tokenizer_dir,
              "model": launch.tiny_model_dir()}
    return root, common


@pytest.mark.slow
def test_single_process_mid_epoch_resume_equals_uninterrupted(setup):
    root, common = setup
    ref, run = root / "single_ref", root / "single_run"
    # the reference and the first (crashing) half run side by side: one core each
    procs = [(launch.start("resume_run.py", log=root / "single_ref.log", run_dir=ref, **common),
              root / "single_ref.log", 0),
             (launch.start("resume_run.py", log=root / "single_a.log", run_dir=run, crash_after_step=3, **common),
              root / "single_a.log", 17)]
    for proc, log, rc in procs:
        launch.finish(proc, log, expect=rc)
    assert (run / "checkpoints" / "last.ckpt").resolve().name == "step=0000002.ckpt"  # the last before the crash
    launch.run("resume_run.py", log=root / "single_b.log", run_dir=run, resume=True, **common)
    assert "Restored all states" in (root / "single_b.log").read_text()
    launch.assert_same_training(ref, run, ranks=1, steps=STEPS)
    assert launch.redone_steps_match(run, 0) == [3]  # step 3 ran before the crash and again after resuming
    # rotation kept the newest two step checkpoints; last points at the final one; nothing half-written is left
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step=0000006.ckpt", "step=0000008.ckpt"], names
    assert (run / "checkpoints" / "last.ckpt").is_symlink()
    assert (run / "checkpoints" / "last.ckpt").resolve().name == "step=0000008.ckpt"


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_two_ranks_padded_resume_through_train_py_equals_uninterrupted(setup):
    """``train.py fit`` of the quickstart config on 2 gloo DDP ranks, padded batches. A SIGTERM to the launcher (rank
    0, which started rank 1) after step 3 stops both ranks with a checkpoint and exit 143; ``--ckpt_path last`` goes
    through train.py's resume hand-off to the launched rank; that attempt crashes on both ranks when step 6 starts
    (its checkpoint: step 4) and is resumed the same way. Per step and rank it equals the uninterrupted run."""
    root, common = setup
    cfg = {"tiny": common["model"], "tok": common["tokenizer"], "corpus": common["corpus"]}
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp", "--data.packing=false"]
    one_thread = {"OMP_NUM_THREADS": "1"}  # two ranks share the 2 cores
    probe = {"class_path": "faults.RandomProbe"}
    plain = launch.quickstart_config(root / "ddp_plain.yaml", **cfg, extra_callbacks=[probe])
    stopped = launch.quickstart_config(root / "ddp_sigterm.yaml", **cfg, extra_callbacks=[
        probe, {"class_path": "faults.SignalAtStep", "init_args": {"step": 3, "signum": 15}}])
    crashing = launch.quickstart_config(root / "ddp_crash.yaml", **cfg, extra_callbacks=[
        probe, {"class_path": "faults.CrashAfterStep", "init_args": {"step": 5}}])
    (root / "ddp_ref").mkdir()
    (root / "ddp_run").mkdir()
    ref, run = root / "ddp_ref" / "runs" / "quickstart", root / "ddp_run" / "runs" / "quickstart"
    launch.train(root / "ddp_ref", plain, *ddp, log=root / "ddp_ref.log", env_extra=one_thread)
    launch.train(root / "ddp_run", stopped, *ddp, log=root / "ddp_a.log", expect=143, env_extra=one_thread)
    assert "stop requested by signal (SIGTERM): checkpoint saved at step 3" in (root / "ddp_a.log").read_text()
    assert (run / "checkpoints" / "last.ckpt").resolve().name == "step=0000003.ckpt"
    launch.train(root / "ddp_run", crashing, *ddp, "--ckpt_path", "last", log=root / "ddp_b.log", expect=17,
                 env_extra=one_thread)
    assert (run / "checkpoints" / "last.ckpt").resolve().name == "step=0000004.ckpt"
    launch.train(root / "ddp_run", plain, *ddp, "--ckpt_path", "last", log=root / "ddp_c.log", env_extra=one_thread)
    launch.assert_same_training(ref, run, ranks=2, steps=STEPS)
    for rank in (0, 1):
        assert launch.redone_steps_match(run, rank) == [5]  # trained before the crash and again after the resume
        assert len(launch.read_rows(run / f"rng.rank{rank}.jsonl")) > 0  # the random draws were compared
    # the two ranks trained on disjoint halves of every step
    a, b = launch.trace_by_step(run, 0), launch.trace_by_step(run, 1)
    assert all(not set(a[s]["ids"]) & set(b[s]["ids"]) and len(a[s]["ids"]) == 2 for s in a)
    assert (run / "run_finished.json").is_file() and (run / "hf_export" / "final" / "model.safetensors").is_file()


# ---- checkpoint file mechanics (no training) ------------------------------------------------------------------
def test_publish_replaces_and_last_link_switches_atomically(tmp_path):
    from skill_distill.io import TMP_PREFIX, point_link, publish_path, remove_path

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for step in (2, 4):
        tmp = ckpts / f"{TMP_PREFIX}step={step}.ckpt"
        tmp.mkdir()
        (tmp / "shard").write_text(str(step))
        publish_path(tmp, ckpts / f"step={step}.ckpt")
        point_link(ckpts / "last.ckpt", ckpts / f"step={step}.ckpt")
        assert (ckpts / "last.ckpt" / "shard").read_text() == str(step)
    assert (ckpts / "last.ckpt").readlink() == Path("step=4.ckpt")  # relative: the run directory can move
    # re-publishing a step replaces it whole
    tmp = ckpts / f"{TMP_PREFIX}step=4.ckpt"
    tmp.mkdir()
    (tmp / "shard").write_text("again")
    publish_path(tmp, ckpts / "step=4.ckpt")
    assert (ckpts / "last.ckpt" / "shard").read_text() == "again"
    remove_path(ckpts / "step=2.ckpt")
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step=4.ckpt"]
    # a single-file checkpoint (other strategies) replaces a directory of the same name, and a file a file
    for content in ("file", "file again"):
        tmp = ckpts / f"{TMP_PREFIX}step=4.ckpt"
        tmp.write_text(content)
        publish_path(tmp, ckpts / "step=4.ckpt")
        assert (ckpts / "last.ckpt").read_text() == content
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step=4.ckpt"]  # no temporary, no trash left


def test_rotation_keeps_the_newest_and_last_never_dangles(tmp_path, monkeypatch):
    """keep_last=1 with a tiny real Trainer: each save drops the previous checkpoint only after `last` points at the
    new one, and a resumed run goes on rotating the checkpoints the first one wrote (the kept list is checkpointed),
    the one it resumed from included, also after its run directory moved."""
    import lightning.pytorch as pl
    from lightning.pytorch.demos.boring_classes import BoringModel

    import callbacks.checkpointing as checkpointing

    removed = []

    def remove_checked(path):
        last = path.parent / "last.ckpt"
        assert last.resolve() != path.resolve(), f"{path} removed while {last} points at it"
        removed.append(path.name)
        remove_path(path)

    remove_path = checkpointing.remove_path
    monkeypatch.setattr(checkpointing, "remove_path", remove_checked)

    def fit(run_dir, max_steps, ckpt_path=None):
        trainer = pl.Trainer(default_root_dir=run_dir, max_steps=max_steps, limit_val_batches=0, logger=False,
                             enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                             callbacks=[checkpointing.ResumableCheckpoint(every_n_train_steps=1, keep_last=1,
                                                                          save_on_epoch_end=False)])
        trainer.fit(BoringModel(), ckpt_path=ckpt_path)

    fit(tmp_path / "run", 3)
    assert removed == ["step=0000001.ckpt", "step=0000002.ckpt"]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["last.ckpt", "step=0000003.ckpt"]
    moved = (tmp_path / "run").rename(tmp_path / "moved")
    # resumed from the step file itself (train.py resolves `last`): Lightning alone would keep that one forever
    fit(moved, 5, ckpt_path=str((moved / "checkpoints" / "last.ckpt").resolve()))
    assert removed[2:] == ["step=0000003.ckpt", "step=0000004.ckpt"]
    assert sorted(p.name for p in (moved / "checkpoints").iterdir()) == ["last.ckpt", "step=0000005.ckpt"]
    assert (moved / "checkpoints" / "last.ckpt").resolve().name == "step=0000005.ckpt"


def test_config_classes_are_allow_listed_for_weights_only_loading():
    from callbacks.checkpointing import project_classes
    from skill_distill.corpus import CorpusFields
    from skill_distill.formatting import SkillFormat

    found = project_classes({"fields": CorpusFields(), "nested": [{"fmt": SkillFormat(mode="full")}], "n": 3})
    assert found == {CorpusFields, SkillFormat}


def test_preemption_rejects_unknown_signal_names():
    from callbacks.preemption import PreemptionCallback
    from skill_distill.io import ConfigError

    cb = PreemptionCallback(signals=("SIGTERM", "USR1"))
    assert [s.name for s in cb.signals] == ["SIGTERM", "SIGUSR1"]
    with pytest.raises(ConfigError, match="unknown signal"):
        PreemptionCallback(signals=("SIGNOPE",))


def test_changed_settings_names_the_changed_key_and_compares_identities(tmp_path, qwen_tokenizer_dir):
    """What a resume compares (lightning_modules/run_dir.py): a changed key inside a group by its own name, a key
    the checkpoint does not record not at all, Lightning's precision spellings as one, and a model or tokenizer
    directory by its identity files wherever it lies (issue 28)."""
    import shutil

    from lightning_modules.run_dir import changed_settings

    saved = {"model": {"model": str(qwen_tokenizer_dir), "learning_rate": 1e-3},
             "data": {"selection": {"strategy": "skill", "budget": 1000, "seed": 42},
                      "reselection": {"every_n_epochs": 1, "discount": 1.0}},
             "trainer": {"precision": "32-true", "seed_everything": 42}}
    same = {"model": dict(saved["model"]), "data": {"selection": {**saved["data"]["selection"], "new_knob": 3},
                                                    "reselection": dict(saved["data"]["reselection"])},
            "trainer": {"precision": 32, "seed_everything": 42}}
    assert changed_settings(saved, same) == []
    moved = tmp_path / "moved_tokenizer"
    shutil.copytree(qwen_tokenizer_dir, moved)
    assert changed_settings(saved, {**same, "model": {**same["model"], "model": str(moved)}}) == []
    (moved / "tokenizer_config.json").write_text("{}")
    assert [c[0] for c in changed_settings(saved, {**same, "model": {**same["model"], "model": str(moved)}})] \
        == ["model.model"]
    changed = {"model": same["model"],
               "data": {"selection": {**same["data"]["selection"], "budget": 500},
                        "reselection": {**same["data"]["reselection"], "discount": 0.9}},
               "trainer": {"precision": "bf16-mixed", "seed_everything": 7}}
    assert changed_settings(saved, changed) == [
        ("data.selection.budget", 1000, 500), ("data.reselection.discount", 1.0, 0.9),
        ("trainer.precision", "32-true", "bf16-mixed"), ("seed_everything", 42, 7)]


@pytest.mark.slow
def test_sigterm_at_an_epochs_last_step_resumes_the_remaining_epochs(setup):
    """A stop requested at the last step of an epoch is saved at that epoch's end: a checkpoint of the last batch
    itself held the data loader at the end of its data, and the resumed run found no batch and stopped at once
    ("max_epochs reached" at step 2 of 4)."""
    root, common = setup
    two_steps = {"examples_per_step": 8, **common}  # 2 steps per epoch, 2 epochs
    ref, run = root / "epoch_end_ref", root / "epoch_end_run"
    procs = [(launch.start("resume_run.py", log=root / "epoch_end_ref.log", run_dir=ref, **two_steps),
              root / "epoch_end_ref.log", 0),
             (launch.start("resume_run.py", log=root / "epoch_end_a.log", run_dir=run, sigterm_at_step=2,
                           **two_steps), root / "epoch_end_a.log", 143)]
    for proc, log, rc in procs:
        launch.finish(proc, log, expect=rc)
    launch.run("resume_run.py", log=root / "epoch_end_b.log", run_dir=run, resume=True, **two_steps)
    launch.assert_same_training(ref, run, ranks=1, steps=4)
    assert launch.redone_steps_match(run, 0) == []  # the stop saved step 2: nothing is trained twice
    assert (run / "checkpoints" / "last.ckpt").resolve().name == "step=0000004.ckpt"
