"""The on-policy distillation configs: the Qwen3-32B -> 4B/8B overrides compose after the base and their model file
(the student, selection and schedule of the paper's skill SFT run; OnPolicyModule and OnPolicyDataModule chosen by
class_path) and instantiate on this CPU with the tiny Qwen3 swapped in for both models; the CPU config instantiates
as is; a config without class_path still builds the SFT classes, and --model.x / --data.x reach a chosen class."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_configs import DISTILL_OVERRIDES, cpu_overrides
from test_distill_configs import compose_override

import train
import train_cli
from datamodules import OnPolicyDataModule, SkillDataModule
from lightning_modules import CausalLMModule, OnPolicyModule
from skill_distill.generation.rollout import RolloutConfig

REPO = Path(__file__).resolve().parents[1]
ON_POLICY = [p for p in DISTILL_OVERRIDES if p.stem.endswith("_on_policy")]
CORPUS = REPO / "data" / "quickstart" / "pool.jsonl"


def test_there_are_on_policy_configs():
    assert {p.name for p in ON_POLICY} == {"qwen3_32b_to_4b_on_policy.yaml", "qwen3_32b_to_8b_on_policy.yaml"}
    assert (REPO / "configs" / "distill" / "on_policy_cpu.yaml").is_file()


def test_the_default_classes_are_spelt_as_checkpoints_record_them():
    assert train_cli.DEFAULT_CLASSES == {"model": f"lightning_modules.{CausalLMModule.__name__}",
                                         "data": f"datamodules.{SkillDataModule.__name__}"}


@pytest.mark.parametrize("path", ON_POLICY, ids=lambda p: p.name)
def test_override_composes_after_its_base(path, tiny_qwen3_dir, qwen_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli, raw = compose_override(path, tiny_qwen3_dir, qwen_tokenizer_dir)
    assert raw["model"]["init_args"]["distillation"]["teacher"] == "Qwen/Qwen3-32B"
    m, d = cli.model, cli.datamodule
    assert type(m) is OnPolicyModule and type(d) is OnPolicyDataModule
    assert m.model_name == str(tiny_qwen3_dir)  # the model file's student (swapped for the tiny one), kept
    assert m.tokenizer_name == str(qwen_tokenizer_dir)  # linked from data.tokenizer
    assert isinstance(m.rollout, RolloutConfig) and m.rollout.backend == "vllm" and m.rollout.n == 4
    assert m.rollout.max_new_tokens + 1024 <= m.rollout.max_model_len == d.max_length == 8192
    assert m.hparams.learning_rate == 1e-5 and m.hparams.gradient_checkpointing  # the base's, kept
    assert d.selection.budget == 1000 and d.selection.strategy == "skill" and d.prompt_weighting == "skill"
    per_rank = {"4b": 4, "8b": 2}[path.stem.split("_to_")[1].split("_")[0]]  # sized in docs/SCALING.md
    assert d.examples_per_step == 8 * per_rank and d.steps_per_epoch == 40 and m.rollout.gpu_memory_utilization == 0.4
    assert cli.trainer.default_root_dir == f"runs/distill/{path.stem}"


@pytest.mark.slow
def test_the_cpu_config_builds_the_on_policy_classes_and_overrides_reach_them(tiny_qwen3_dir, qwen_tokenizer_dir,
                                                                              tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = train.main(["--config", str(REPO / "configs" / "distill" / "on_policy_cpu.yaml"),
                      *cpu_overrides(tiny_qwen3_dir, qwen_tokenizer_dir, CORPUS), "--model.rollout.n=3",
                      "--model.lmbda=0.5", "--data.prompt_weighting=uniform", "--model.learning_rate=2e-4"], run=False)
    assert type(cli.model) is OnPolicyModule and type(cli.datamodule) is OnPolicyDataModule
    assert (cli.model.rollout.n, cli.model.hparams.lmbda, cli.model.hparams.learning_rate) == (3, 0.5, 2e-4)
    assert cli.datamodule.prompt_weighting == "uniform" and cli.model.rollout.backend == "hf"
    # the same flags on an SFT config: the default classes, as before class selection
    cli = train.main(["--config", str(REPO / "configs" / "quickstart.yaml"),
                      *cpu_overrides(tiny_qwen3_dir, qwen_tokenizer_dir, CORPUS), "--model.learning_rate=2e-4",
                      f"--trainer.default_root_dir={tmp_path / 'sft'}"], run=False)
    assert type(cli.model) is CausalLMModule and type(cli.datamodule) is SkillDataModule
    assert cli.model.hparams.learning_rate == 2e-4


@pytest.mark.parametrize("args,expected", [
    (["--model.lmbda=0.5"], "error: unrecognized arguments: --model.lmbda=0.5"),  # an on-policy key on SFT's class
    (["--model.lerning_rate=1"], "error: unrecognized arguments: --model.lerning_rate=1; did you mean "
                                 "--model.learning_rate?"),
    (["--data.selection.budgt=3"], "error: unrecognized arguments: --data.selection.budgt=3; did you mean "
                                   "--data.selection.budget?"),
    (["--model.learning_rate=abc"], "error: model.learning_rate: Expected a <class 'float'>. Got value: abc"),
])
def test_a_bad_model_or_data_key_is_one_line(args, expected, tiny_qwen3_dir, qwen_tokenizer_dir, tmp_path,
                                             monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        train.main(["fit", "--config", str(REPO / "configs" / "quickstart.yaml"),
                    *cpu_overrides(tiny_qwen3_dir, qwen_tokenizer_dir, CORPUS), *args], run=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and err[-1].startswith(expected), err[-3:]


@pytest.mark.parametrize("recorded", [{"_class_path": "lightning_modules.CausalLMModule"}, {}],
                         ids=["recorded", "before-class-selection"])
def test_a_resume_with_another_module_class_is_refused(recorded, tiny_qwen3_dir, qwen_tokenizer_dir, tmp_path,
                                                       monkeypatch):
    """An SFT run's checkpoint (its class recorded by LightningCLI as ``_class_path``, or not at all: written before
    classes could be chosen) resumed with the on-policy config: refused in one line naming model.class_path."""
    import torch

    from skill_distill.io import ConfigError

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "step=0000001.ckpt"
    torch.save({"global_step": 1, "hyper_parameters": {**recorded, "learning_rate": 1e-4},
                "datamodule_hyper_parameters": {}, "callbacks": {}}, ckpt)
    with pytest.raises(ConfigError) as refused:
        train.main(["fit", "--config", str(REPO / "configs" / "distill" / "on_policy_cpu.yaml"),
                    *cpu_overrides(tiny_qwen3_dir, qwen_tokenizer_dir, CORPUS), f"--trainer.default_root_dir={run}",
                    f"--ckpt_path={ckpt}"], run=True)
    line = str(refused.value)
    assert line.startswith('model.class_path (and data.class_path) is "lightning_modules.OnPolicyModule" here but '
                           '"lightning_modules.CausalLMModule" in the checkpoint'), line
    assert "\n" not in line and not (run / "logs").exists()
