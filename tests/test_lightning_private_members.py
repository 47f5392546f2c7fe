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
