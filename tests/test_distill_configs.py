"""The logit-distillation configs: the Qwen3-32B -> 4B/8B overrides compose after the base and their model file
(the student, data and schedule of the paper's skill SFT run, the teacher beside it) and instantiate on this CPU
with the tiny Qwen3 swapped in for both models; bad distillation values are refused when the config is parsed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_configs import DISTILL_OVERRIDES, cpu_overrides

import train
from lightning_modules.distill_loss import DistillationConfig
from skill_distill.io import ConfigError

REPO = Path(__file__).resolve().parents[1]


LOGIT_KD = [p for p in DISTILL_OVERRIDES if p.stem.endswith("_logit_kd")]  # on-policy: tests/test_on_policy_configs.py


def test_there_are_distillation_configs():
    assert {p.name for p in LOGIT_KD} == {"qwen3_32b_to_4b_logit_kd.yaml", "qwen3_32b_to_8b_logit_kd.yaml"}


def compose_override(path: Path, tiny_dir: Path, tok_dir: Path):
    """(CLI, raw YAML) of a configs/distill/qwen3_32b_to_* override composed after the base and its student's model
    file as its header's command says, with the tiny Qwen3 as student and teacher on this CPU."""
    size = path.stem.split("_to_")[1].split("_")[0]
    base, model = REPO / "configs" / "base" / "sft.yaml", REPO / "configs" / "models" / f"qwen3_{size}.yaml"
    assert (f"--config configs/base/sft.yaml --config configs/models/qwen3_{size}.yaml \\\n"
            f"#       --config configs/distill/{path.name}") in path.read_text()
    cli = train.main(["--config", str(base), "--config", str(model), "--config", str(path),
                      *cpu_overrides(tiny_dir, tok_dir, REPO / "data" / "quickstart" / "pool.jsonl"),
                      f"--model.distillation.teacher={tiny_dir}"], run=False)
    return cli, yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", LOGIT_KD, ids=lambda p: p.name)
def test_override_composes_after_its_base(path, tiny_qwen3_dir, qwen_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli, raw = compose_override(path, tiny_qwen3_dir, qwen_tokenizer_dir)
    assert raw["model"]["distillation"]["teacher"] == "Qwen/Qwen3-32B" and set(raw) == {"trainer", "model"}
    d = cli.model.distillation
    assert isinstance(d, DistillationConfig) and d.divergence == "forward_kl" and d.alpha == 0.5
    assert cli.trainer.default_root_dir == f"runs/distill/{path.stem}"
    assert cli.model.hparams.learning_rate == 1e-5  # the base's schedule is kept
    assert cli.datamodule.selection.budget == 1000  # the 1K selected traces


@pytest.mark.parametrize("bad,message", [
    ({}, "set exactly one of teacher"),
    ({"teacher": "t", "teacher_logprobs": "d"}, "set exactly one of teacher"),
    ({"teacher": "t", "alpha": 1.5}, "alpha must be in"),
    ({"teacher": "t", "divergence": "kl"}, "divergence='kl' is unknown"),
    ({"teacher": "t", "divergence": "jsd", "beta": 1.0}, "beta must be in"),
    ({"teacher": "t", "tau": 0}, "tau must be > 0"),
    ({"teacher_logprobs": "d", "tau": 2.0}, "stored teacher logprobs are at temperature 1"),
    ({"teacher": "t", "chunk_size": 0}, "chunk_size must be >= 1"),
])
def test_bad_distillation_values_are_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        DistillationConfig(**bad)
