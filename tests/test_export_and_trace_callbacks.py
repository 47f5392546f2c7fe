"""HFExportCallback and StepTraceCallback as units: a real tiny Qwen3 module, the trainer state they read."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from callbacks import HFExportCallback, StepTraceCallback
from lightning_modules import CausalLMModule


@pytest.fixture(scope="module")
def module(tiny_qwen3_dir):
    m = CausalLMModule(model=str(tiny_qwen3_dir), tokenizer=str(tiny_qwen3_dir), attn_implementation="sdpa")
    m.configure_model()
    return m


def run_state(root, epoch: int) -> SimpleNamespace:
    """The trainer attributes the export callback reads (and its model card: leading rank, schedule, no data)."""
    return SimpleNamespace(default_root_dir=str(root), current_epoch=epoch, is_global_zero=True, max_epochs=4,
                           precision="32-true", global_step=8 * (epoch + 1), world_size=1, accumulate_grad_batches=1,
                           datamodule=None, callbacks=[])


@pytest.mark.slow
def test_hf_export_every_n_epochs_and_final_reload_the_weights(module, tmp_path):
    callback = HFExportCallback(every_n_epochs=2, dtype="bfloat16")
    for epoch in range(4):
        callback.on_train_epoch_end(run_state(tmp_path, epoch), module)
    assert sorted(p.name for p in (tmp_path / "hf_export").iterdir()) == ["epoch=1", "epoch=3"]
    callback.on_train_end(run_state(tmp_path, 3), module)
    final = tmp_path / "hf_export" / "final"
    assert callback.last_export == str(final) and (final / "tokenizer_config.json").is_file()
    assert str(module.hparams.model) in (final / "README.md").read_text()  # the model card names the base model
    reloaded = AutoModelForCausalLM.from_pretrained(final)
    assert reloaded.dtype == torch.bfloat16 and reloaded.config.use_cache is True  # training turns it off
    state = module.model.state_dict()
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, state[name].to(torch.bfloat16)), name
    elsewhere = HFExportCallback(dirpath=str(tmp_path / "mine"))
    elsewhere.on_train_end(run_state(tmp_path, 0), module)
    assert (tmp_path / "mine" / "final" / "config.json").is_file()


def test_step_trace_writes_one_row_per_optimizer_step_and_rank(tmp_path):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-5)
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), accumulate_grad_batches=2, global_rank=1,
                              current_epoch=0, global_step=0, callback_metrics={}, optimizers=[optimizer])
    trace = StepTraceCallback()
    batches = [["a", "b"], ["c"], ["d", "e"], ["f"], ["g"]]  # two full steps, then half a step
    for i, ids in enumerate(batches):
        trace.on_train_batch_start(trainer, None, {"example_ids": ids}, i)
        if i % 2:
            trainer.global_step += 1
            trainer.callback_metrics = {"train/loss": torch.tensor(1.5 * trainer.global_step)}
        trace.on_train_batch_end(trainer, None, None, {"example_ids": ids}, i)
    rows = [json.loads(line) for line in (tmp_path / "step_trace.rank1.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "rank": 1, "epoch": 0, "ids": ["a", "b", "c"], "loss": 1.5, "lr": 3e-5},
                    {"step": 2, "rank": 1, "epoch": 0, "ids": ["d", "e", "f"], "loss": 3.0, "lr": 3e-5}]
    resumed = StepTraceCallback(path=str(tmp_path / "trace.{rank}.jsonl"))  # appends, rank in the name
    trainer.global_rank = 0
    for i, ids in enumerate(batches[:2]):
        resumed.on_train_batch_start(trainer, None, {"example_ids": ids}, i)
        resumed.on_train_batch_end(trainer, None, None, {"example_ids": ids}, i)
    assert json.loads((tmp_path / "trace.0.jsonl").read_text())["ids"] == ["a", "b", "c"]
