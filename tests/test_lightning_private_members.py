"""The Lightning private members the project overrides or reads still exist with the shapes it relies on (checked
with Lightning 2.6.6): an upgrade that removes or reshapes one fails here, by name, not deep inside a run."""

from __future__ import annotations

import inspect

import lightning
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from callbacks.checkpointing import TRAINER_PRIVATE_MEMBERS, ResumableCheckpoint


def test_the_checkpoint_callback_uses_only_public_checkpoint_apis():
    """ResumableCheckpoint is a plain ``Checkpoint`` around the public ``Trainer.save_checkpoint``: it inherits no
    ModelCheckpoint machinery whose private members could change under it."""
    assert not issubclass(ResumableCheckpoint, ModelCheckpoint)
    assert issubclass(ResumableCheckpoint, lightning.pytorch.callbacks.Checkpoint)


@pytest.mark.parametrize("name", TRAINER_PRIVATE_MEMBERS)
def test_trainer_still_has_the_member(name):
    obj = lightning.pytorch.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                                    accelerator="cpu", devices=1)
    for part in name.split("."):
        assert hasattr(obj, part), (f"lightning {lightning.__version__}: Trainer.{name} is gone; "
                                    "callbacks/checkpointing.ResumableCheckpoint relies on it")
        obj = getattr(obj, part)
    assert callable(obj) and list(inspect.signature(obj).parameters) == [], name


@pytest.mark.parametrize("strategy", [DDPStrategy, ModelParallelStrategy])
def test_strategies_keep_their_process_group_timeout(strategy):
    timeout = getattr(strategy(), "_timeout", None)  # SkillEvalCallback compares it with its own time limit
    assert timeout is not None and timeout.total_seconds() > 0, f"{strategy.__name__}._timeout is gone"


def test_callback_state_key_helper_exists():
    assert "kwargs" in inspect.signature(lightning.pytorch.Callback._generate_state_key).parameters


def test_the_cli_still_merges_checkpoint_hyperparameters_in_the_member_train_cli_overrides():
    """``train_cli.SkillCLI`` no-ops ``LightningCLI._parse_ckpt_path``: Lightning has no public switch for its merge of
    a checkpoint file's hyperparameters over the command line's (it runs between ``parse_arguments`` and
    ``before_instantiate_classes``). Renamed or moved, the override would silently stop applying;
    tests/test_run_safety.py's explicit-checkpoint changed-learning-rate case shows what it then does."""
    from lightning.pytorch.cli import LightningCLI

    import train_cli

    assert list(inspect.signature(LightningCLI._parse_ckpt_path).parameters) == ["self"]
    init = inspect.getsource(LightningCLI.__init__)
    assert init.index("self.parse_arguments(") < init.index("self._parse_ckpt_path()") \
        < init.index("self.before_instantiate_classes()"), f"lightning {lightning.__version__}: the order changed"
    assert "_parse_ckpt_path" in vars(train_cli.SkillCLI)
