"""Every shipped YAML parses against the code and instantiates (models swapped for the tiny Qwen3, hardware for
this CPU); production configs carry docs/METHOD.md §6's values."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

import train
from skill_distill.__main__ import STAGES
from skill_distill.eval_sets import PAPER_SUITE

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT_DRIVERS = {
    REPO / "configs" / "experiments" / "skill_selection_cpu.yaml": "experiments/skill_selection_cpu.py",
    REPO / "configs" / "experiments" / "evidence_round2.yaml": "experiments/skill_selection_cpu.py",
    REPO / "configs" / "experiments" / "evidence_round3.yaml": "experiments/skill_selection_cpu.py"}
# configs/qwen3_*/base.yaml holds everything a model's runs share; every other file beside it is a run file with only
# its differences, composed after the base: --config <dir>/base.yaml --config <dir>/<run>.yaml
MODEL_DIRS = sorted(p for p in (REPO / "configs").glob("qwen3_*") if p.is_dir())
BASES = [d / "base.yaml" for d in MODEL_DIRS]
RUN_FILES = sorted(p for d in MODEL_DIRS for p in d.glob("*.yaml") if p.name != "base.yaml")
# <run>_16k.yaml, <run>_32k.yaml: full-length teacher traces
LENGTH_OVERRIDES = [p for p in RUN_FILES if re.search(r"_\d+k$", p.stem)]
# files that add a feature on top of another config (callbacks+): override -> the config it is composed after
OVERRIDES = {REPO / "configs" / "qwen3_4b" / "closed_loop.yaml": REPO / "configs" / "qwen3_4b" / "base.yaml",
             REPO / "configs" / "experiments" / "skill_selection_closed_loop.yaml":
             REPO / "configs" / "experiments" / "skill_selection_arm.yaml"}
PRODUCTION = [p for p in RUN_FILES if p not in LENGTH_OVERRIDES and p not in OVERRIDES]
# configs run alone: the quickstart, the experiment arm, and the bases
TRAIN_CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml")
                       if "pipeline" not in p.parts and p not in EXPERIMENT_DRIVERS and p not in RUN_FILES
                       and p not in OVERRIDES)
PIPELINE_CONFIGS = sorted((REPO / "configs" / "pipeline").glob("*.yaml"))


def test_there_are_configs():
    assert (REPO / "configs" / "quickstart.yaml") in TRAIN_CONFIGS
    assert len(BASES) == 2 and all(b in TRAIN_CONFIGS for b in BASES)
    assert {p.relative_to(REPO / "configs").as_posix() for p in PRODUCTION} >= {
        f"qwen3_{size}/{run}.yaml" for size in ("4b", "8b")
        for run in ("skill_sft", "random_sft", "skill_sft_2node", "random_sft_2node")}


KEY_LINE = re.compile(r"^\s*(?:- )?[A-Za-z_][\w.+]*:")


@pytest.mark.parametrize("path", BASES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_key_of_a_base_has_a_comment_line_above_it(path):
    lines = path.read_text().splitlines()
    bare = [f"{path.name}:{i + 1}: {line.strip()}" for i, line in enumerate(lines)
            if KEY_LINE.match(line) and not (i and lines[i - 1].lstrip().startswith("#"))]
    assert not bare, "keys without a comment line above them (what it is, its type and default):\n" + "\n".join(bare)


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_a_run_file_holds_only_its_differences_and_names_its_command(path):
    base, run = yaml.safe_load((path.parent / "base.yaml").read_text()), yaml.safe_load(path.read_text())

    def same(b, r, where=""):
        return [where] if b == r else ([] if not (isinstance(b, dict) and isinstance(r, dict))
                                       else [x for k in r if k in b for x in same(b[k], r[k], f"{where}.{k}")])

    assert not same(base, run), f"{path.name} repeats the base's values at {same(base, run)}"
    assert f"--config configs/{path.parent.name}/base.yaml" in path.read_text()  # the command that composes it


def cpu_overrides(tiny_dir: Path, tok_dir: Path, corpus: Path) -> list[str]:
    return ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto",
            f"--model.model={tiny_dir}", f"--data.tokenizer={tok_dir}", f"--data.corpus={corpus}"]


@pytest.mark.parametrize("override", OVERRIDES, ids=lambda p: str(p.relative_to(REPO)))
def test_override_config_composes_after_its_base(override, tiny_qwen3_dir, qwen_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = REPO / "data" / "quickstart" / "pool.jsonl"
    data = REPO / "data" / "quickstart"
    # the experiment's arm config leaves the selection to the driver; the closed loop needs skill selection
    driver_args = [f"--data.tree={data / 'tree.json'}", f"--data.attribution={data / 'attribution.jsonl'}",
                   f"--data.profile={data / 'profile' / 'profile.json'}", "--data.selection.strategy=skill"] \
        if "experiments" in override.parts else []
    cli = train.main(["--config", str(OVERRIDES[override]), "--config", str(override),
                      *cpu_overrides(tiny_qwen3_dir, qwen_tokenizer_dir, corpus), *driver_args], run=False)
    from callbacks import ReselectionCallback, SkillEvalCallback

    kinds = [type(c) for c in cli.trainer.callbacks]
    base = yaml.safe_load(OVERRIDES[override].read_text())
    evals_in_base = sum("SkillEvalCallback" in c["class_path"] for c in base["trainer"].get("callbacks", []))
    assert kinds.count(SkillEvalCallback) == evals_in_base and kinds.count(ReselectionCallback) == 1  # appended,
    # the base's callbacks kept
    assert cli.datamodule.reselection.enabled
    assert cli.datamodule.selection.budget == base["data"]["selection"]["budget"]


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_training_config_parses_and_instantiates(path, tiny_qwen3_dir, qwen_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run directories land in tmp
    corpus = REPO / "data" / "quickstart" / "pool.jsonl"
    cli = train.main(["--config", str(path), *cpu_overrides(tiny_qwen3_dir, qwen_tokenizer_dir, corpus)], run=False) \
        if "run" in inspect.signature(train.main).parameters else None
    assert cli is not None, "train.main must accept run=False for config checks"
    from datamodules import SkillDataModule
    from lightning_modules import CausalLMModule

    assert isinstance(cli.model, CausalLMModule) and isinstance(cli.datamodule, SkillDataModule)
    assert cli.model.tokenizer_name == str(qwen_tokenizer_dir)  # linked from data.tokenizer


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_training_configs_stop_cleanly_and_name_their_run_directory_once(path):
    t = yaml.safe_load(path.read_text())["trainer"]
    kinds = [c["class_path"] for c in t["callbacks"]]
    # SIGTERM/SIGUSR1: agreed stop, checkpoint, exit 143; one checkpoint callback, so nothing is written twice
    assert "callbacks.checkpointing.ResumableCheckpoint" in kinds and "callbacks.preemption.PreemptionCallback" in kinds
    assert sum(k.endswith("ModelCheckpoint") or k.endswith("ResumableCheckpoint") for k in kinds) == 1
    # everything follows trainer.default_root_dir: no logger or callback names the run directory again
    rest = yaml.safe_dump({k: v for k, v in t.items() if k != "default_root_dir"})
    assert t["default_root_dir"] not in rest and "runs/" not in rest


def composed(path: Path, tiny_dir: Path, tok_dir: Path) -> dict:
    """``--config base.yaml --config <run>.yaml`` as the real CLI parser composes it (after the composed config
    instantiated on this CPU)."""
    corpus = REPO / "data" / "quickstart" / "pool.jsonl"
    configs = ["--config", str(path.parent / "base.yaml"), "--config", str(path)]
    cli = train.main([*configs, *cpu_overrides(tiny_dir, tok_dir, corpus)], run=False)
    return cli.parser.parse_args(configs).as_dict()


@pytest.mark.parametrize("path", PRODUCTION, ids=lambda p: str(p.relative_to(REPO)))
def test_production_configs_follow_the_paper(path, tiny_qwen3_dir, qwen_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = composed(path, tiny_qwen3_dir, qwen_tokenizer_dir)
    assert cfg["trainer"]["default_root_dir"] == f"runs/{path.parent.name}/{path.stem}"  # each run its own
    t, m, d = cfg["trainer"], cfg["model"], cfg["data"]
    assert m["learning_rate"] == 1e-5 and m["warmup_ratio"] == 0.1 and m["min_lr_ratio"] == 0.0
    assert m["weight_decay"] == 0.0 and list(m["betas"]) == [0.9, 0.999] and m["max_grad_norm"] == 1.0
    assert t["max_epochs"] == 5 and d["max_length"] == 8192 and d["enable_thinking"] is True
    ranks = t["devices"] * t.get("num_nodes", 1)
    effective = d["examples_per_step"]
    micro = effective // (ranks * t["accumulate_grad_batches"])
    assert ranks * micro * t["accumulate_grad_batches"] == effective
    if t.get("num_nodes", 1) == 1:
        assert effective == 8  # the paper's effective batch; multi-node configs state their deviation
    sel = d["selection"]
    assert sel["budget"] == 1000
    if "random" in path.stem:
        assert sel["strategy"] == "random" and d["skill_format"]["mode"] == "off"
    else:
        assert sel["strategy"] == "skill" and sel["w_max"] == 1000.0 and sel["temperature"] == 1.0
        assert d["skill_format"]["mode"] == "full" and d["profile"]
    strategy = t["strategy"]["init_args"]
    nodes = t.get("num_nodes", 1)
    assert strategy["data_parallel_size"] * strategy["tensor_parallel_size"] == ranks // nodes * nodes

    # docs/METHOD.md §7 evaluation inside the run: the held-out slice every epoch, the five benchmarks on the final
    # weights
    evals = [c["init_args"] for c in t["callbacks"] if c["class_path"] == "callbacks.SkillEvalCallback"]
    assert len(evals) == 2 and len({e["dirpath"] for e in evals}) == 2  # separate report directories
    per_epoch, final = evals
    assert per_epoch["every_n_epochs"] == 1 and per_epoch["baseline"] is True
    assert [b["name"] for b in per_epoch["benchmarks"]] == ["heldout"] and d["val_corpus"]
    assert final["every_n_epochs"] == 0 and final["benchmarks"] == PAPER_SUITE
    timeout = strategy["timeout"]  # a timedelta once parsed
    timeout_s = timeout.total_seconds() if hasattr(timeout, "total_seconds") else \
        sum(int(x) * f for x, f in zip(str(timeout).split(":"), (3600, 60, 1), strict=True))
    for e in evals:
        assert e["sampling"] == {"temperature": 0.6, "top_p": 1.0, "max_new_tokens": 16384, "n": 1, "seed": 0}
        assert e["backend"]["kind"] == "vllm" and e["backend"]["max_model_len"] > 16384
        assert timeout_s > e["timeout_s"]  # ranks outwait the slowest evaluation


def test_length_overrides_exist_for_both_models():
    assert {p.relative_to(REPO / "configs").as_posix() for p in LENGTH_OVERRIDES} >= {
        f"qwen3_{size}/skill_sft_{k}.yaml" for size in ("4b", "8b") for k in ("16k", "32k")}


@pytest.mark.parametrize("path", LENGTH_OVERRIDES, ids=lambda p: str(p.relative_to(REPO)))
def test_length_override_composes_with_its_base(path, tiny_qwen3_dir, qwen_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = path.parent / "base.yaml"
    length = {"16k": 16384, "32k": 32768}[path.stem.rsplit("_", 1)[1]]
    text = path.read_text()
    assert "DEPARTURE FROM THE PAPER" in text and f"{length:,}" in text and "8,192" in text  # stated in the file
    assert yaml.safe_load(base.read_text())["data"]["max_length"] == 8192
    corpus = REPO / "data" / "quickstart" / "pool.jsonl"
    cli = train.main(["--config", str(base), "--config", str(path),
                      *cpu_overrides(tiny_qwen3_dir, qwen_tokenizer_dir, corpus)], run=False)
    assert cli.datamodule.max_length == length
    assert cli.model.hparams.loss_implementation == "auto" and cli.model.loss_implementation == "linear_ce"
    # its own run directory everywhere, so it never resumes (or overwrites) the 8,192-token run
    run_dir = f"runs/{path.parent.name}/{path.stem}"
    assert cli.trainer.default_root_dir == run_dir
    dirs = [getattr(c, "dirpath", None) for c in cli.trainer.callbacks] + [lg.save_dir for lg in cli.trainer.loggers]
    dirs = [str(d) for d in dirs if d]
    # relative output folders of callbacks (eval_heldout, eval) are taken inside the run directory
    inside = [d.startswith(run_dir) or d.startswith(str(tmp_path / run_dir)) or not (d.startswith("runs/")
              or Path(d).is_absolute()) for d in dirs]
    assert len(dirs) >= 4 and all(inside), dirs
    # the rest is the base's (the paper's schedule and selection)
    assert cli.model.hparams.learning_rate == 1e-5 and cli.datamodule.examples_per_step == 8


@pytest.mark.parametrize("path", PIPELINE_CONFIGS, ids=lambda p: p.name)
def test_pipeline_config_parses_against_its_stage(path):
    cfg = yaml.safe_load(path.read_text())
    # the stage is named by the file prefix: <stage>_<name>.yaml with '-' written as '_'
    matches = [name for name in STAGES if path.stem.startswith(name.replace("-", "_") + "_")]
    assert matches, f"{path.name}: name it <stage>_<what>.yaml with a stage of {sorted(STAGES)}"
    stage = max(matches, key=len)
    module, func, _ = STAGES[stage]
    import importlib

    fn = getattr(importlib.import_module(module), func)
    parser = ArgumentParser()
    parser.add_function_arguments(fn)
    ns = parser.parse_object(cfg)
    init = parser.instantiate_classes(ns)
    assert init is not None and set(cfg) <= set(vars(ns))


@pytest.mark.parametrize("path", sorted(EXPERIMENT_DRIVERS), ids=lambda p: p.name)
def test_experiment_config_parses_against_its_driver(path):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("experiment_driver", REPO / EXPERIMENT_DRIVERS[path])
    driver = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = driver  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(driver)
    parser = ArgumentParser()
    parser.add_function_arguments(driver.main)
    init = parser.instantiate_classes(parser.parse_object(yaml.safe_load(path.read_text())))
    assert init.regimes and init.seeds
    for regime in init.regimes:
        assert isinstance(regime, driver.ExperimentConfig) and regime.budget > 0
        regime.validate()  # arms known, random among them, 1 to 4 tries
