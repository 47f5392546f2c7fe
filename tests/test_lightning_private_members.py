"""The Lightning private members the project overrides or reads still exist with the shapes it relies on (checked
with Lightning 2.6.6): an upgrade that removes or reshapes one fails here, by name, not deep inside a run."""

from __future__ import annotations

import inspect

import lightning
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from callbacks.checkpointing import MODEL_CHECKPOINT_PRIVATE_MEMBERS, ResumableCheckpoint

SIGNATURES = {  # the overridden methods: their parameters as Lightning calls them
    "_save_checkpoint": ["self", "trainer", "filepath"],
    "_link_checkpoint": ["trainer", "filepath", "linkpath"],  # a staticmethod
    "_remove_checkpoint": ["self", "trainer", "filepath"],
    "_should_skip_saving_checkpoint": ["self", "trainer"],
    "_monitor_candidates": ["self", "trainer"],
}


@pytest.mark.parametrize("name", MODEL_CHECKPOINT_PRIVATE_MEMBERS)
def test_model_checkpoint_still_has_the_member(name):
    stock = ModelCheckpoint(every_n_train_steps=3)
    assert hasattr(stock, name), (f"lightning {lightning.__version__}: ModelCheckpoint.{name} is gone; "
                                  "callbacks/checkpointing.ResumableCheckpoint relies on it")
    if name in SIGNATURES:
        assert list(inspect.signature(getattr(ModelCheckpoint, name)).parameters) == SIGNATURES[name], name
        assert getattr(ResumableCheckpoint, name) is not getattr(ModelCheckpoint, name) or name in (
            "_should_skip_saving_checkpoint", "_monitor_candidates")  # read, not overridden
    assert isinstance(inspect.getattr_static(ModelCheckpoint, "_link_checkpoint"), staticmethod)


@pytest.mark.parametrize("strategy", [DDPStrategy, ModelParallelStrategy])
def test_strategies_keep_their_process_group_timeout(strategy):
    timeout = getattr(strategy(), "_timeout", None)  # SkillEvalCallback compares it with its own time limit
    assert timeout is not None and timeout.total_seconds() > 0, f"{strategy.__name__}._timeout is gone"


def test_callback_state_key_helper_exists():
    assert "kwargs" in inspect.signature(lightning.pytorch.Callback._generate_state_key).parameters
