"""Every shipped YAML parses against the code and instantiates (models swapped for the tiny Qwen3, hardware for
this CPU), every production composition (base, model file, run file) included; production configs carry
docs/METHOD.md §6's values."""

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
CONFIGS = REPO / "configs"
EXPERIMENT_DRIVERS = {
    CONFIGS / "experiments" / "skill_selection_cpu.yaml": "experiments/skill_selection_cpu.py",
    CONFIGS / "experiments" / "evidence_round2.yaml": "experiments/skill_selection_cpu.py",
    CONFIGS / "experiments" / "evidence_round3.yaml": "experiments/skill_selection_cpu.py"}
# A production run is composed of three files and its run directory:
#   --config configs/base/sft.yaml --config configs/models/<model>.yaml --config configs/runs/<run>.yaml
#   --trainer.default_root_dir runs/<model>/<run>
# the base holds everything the runs share, a model file the model, its tokenizer and profile, a run file only what
# the run changes.
SFT_BASE = CONFIGS / "base" / "sft.yaml"
MODEL_FILES = sorted((CONFIGS / "models").glob("*.yaml"))
RUN_FILES = sorted((CONFIGS / "runs").glob("*.yaml"))
COMPOSITIONS = [(model, run) for model in MODEL_FILES for run in RUN_FILES]
# <run>_16k.yaml, <run>_32k.yaml: full-length teacher traces
LENGTH_OVERRIDES = [p for p in RUN_FILES if re.search(r"_\d+k$", p.stem)]
CLOSED_LOOP = CONFIGS / "runs" / "closed_loop.yaml"
PRODUCTION = [p for p in RUN_FILES if p not in LENGTH_OVERRIDES and p != CLOSED_LOOP]
# files that add a feature on top of other configs (callbacks+): override -> the configs it is composed after
OVERRIDES = {CLOSED_LOOP: [SFT_BASE, CONFIGS / "models" / "qwen3_4b.yaml"],
             CONFIGS / "experiments" / "skill_selection_closed_loop.yaml":
             [CONFIGS / "experiments" / "skill_selection_arm.yaml"]}
# configs/distill/qwen3_32b_to_*: overrides of a production composition, composed in tests/test_distill_configs.py
DISTILL_OVERRIDES = sorted((CONFIGS / "distill").glob("qwen3_*.yaml"))
# the evidence round's on-policy arm, composed after the arm config in tests/test_evidence_on_policy.py
EVIDENCE_ON_POLICY = CONFIGS / "experiments" / "skill_selection_on_policy.yaml"
# configs run alone: the quickstart, the experiment arm and the CPU distillation runs
TRAIN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml")
                       if p.parent.name in ("configs", "experiments", "distill") and p not in EXPERIMENT_DRIVERS
                       and p not in OVERRIDES and p not in DISTILL_OVERRIDES and p != EVIDENCE_ON_POLICY)
PIPELINE_CONFIGS = sorted((CONFIGS / "pipeline").glob("*.yaml"))
# project configs of `python -m skill_distill run`, parsed in tests/test_project_run.py
EXAMPLE_CONFIGS = sorted((CONFIGS / "examples").glob("*.yaml"))


def rel(p: Path) -> str:
    return p.relative_to(REPO).as_posix()


def composition(model: Path, run: Path) -> list[str]:
    """The command line of a production run, as each run file states it (config paths absolute, so that tests run
    it from a temporary directory, where the run directory would be made)."""
    return ["--config", str(SFT_BASE), "--config", str(model), "--config", str(run),
            f"--trainer.default_root_dir=runs/{model.stem}/{run.stem}"]


def test_there_are_configs():
    assert CONFIGS / "quickstart.yaml" in TRAIN_CONFIGS and CONFIGS / "experiments" / "skill_selection_arm.yaml" in \
        TRAIN_CONFIGS
    assert {p.stem for p in MODEL_FILES} == {"qwen3_4b", "qwen3_8b"}
    assert {p.stem for p in RUN_FILES} >= {"skill_sft", "random_sft", "skill_sft_2node", "random_sft_2node",
                                           "skill_sft_16k", "skill_sft_32k", "closed_loop"}
    every = set(CONFIGS.rglob("*.yaml"))  # every shipped YAML is one of the kinds tested here
    assert every == {SFT_BASE, *MODEL_FILES, *RUN_FILES, *TRAIN_CONFIGS, *OVERRIDES, *EXPERIMENT_DRIVERS,
                     *DISTILL_OVERRIDES, EVIDENCE_ON_POLICY, *PIPELINE_CONFIGS, *EXAMPLE_CONFIGS}


KEY_LINE = re.compile(r"^\s*(?:- )?[A-Za-z_][\w.+]*:")


@pytest.mark.parametrize("path", [SFT_BASE, *MODEL_FILES], ids=rel)
def test_every_key_of_the_base_and_the_model_files_has_a_comment_line_above_it(path):
    lines = path.read_text().splitlines()
    bare = [f"{path.name}:{i + 1}: {line.strip()}" for i, line in enumerate(lines)
            if KEY_LINE.match(line) and not (i and lines[i - 1].lstrip().startswith("#"))]
    assert not bare, "keys without a comment line above them (what it is, its type and default):\n" + "\n".join(bare)


def leaves(tree: dict, where: str = "") -> dict:
    """``{"a.b": value}`` for every leaf of a nested dict (an empty dict below the top is a leaf)."""
    if not isinstance(tree, dict) or (not tree and where):
        return {where: tree}
    return {k: v for key, value in tree.items() for k, v in leaves(value, f"{where}.{key}".lstrip(".")).items()}


@pytest.mark.parametrize("path", MODEL_FILES, ids=rel)
def test_a_model_file_holds_the_model_its_tokenizer_and_profile_only(path):
    assert set(leaves(yaml.safe_load(path.read_text()))) == {"model.model", "data.tokenizer", "data.profile"}
    assert path.stem in leaves(yaml.safe_load(path.read_text()))["data.profile"]  # its own profile
    assert not {"model.model", "data.tokenizer", "data.profile"} & set(leaves(yaml.safe_load(SFT_BASE.read_text())))


@pytest.mark.parametrize("path", RUN_FILES, ids=rel)
def test_a_run_file_holds_only_its_differences_and_names_its_command(path):
    shared = {**leaves(yaml.safe_load(SFT_BASE.read_text())),
              **{k: v for m in MODEL_FILES for k, v in leaves(yaml.safe_load(m.read_text())).items()}}
    run = leaves(yaml.safe_load(path.read_text()) or {})
    repeated = [k for k, v in run.items() if k in shared and shared[k] == v and k != "data.profile"]
    assert not repeated, f"{path.name} repeats the base's values at {repeated}"
    assert "trainer.default_root_dir" not in run  # the command names it: one directory per model and run
    # the command that composes it, at the top of the file
    command = " ".join(line.lstrip("#").strip().rstrip("\\").strip() for line in path.read_text().splitlines()[:6])
    assert (f"python train.py fit --config configs/base/sft.yaml --config configs/models/qwen3_4b.yaml "
            f"--config configs/runs/{path.name} --trainer.default_root_dir runs/qwen3_4b/{path.stem}") in command


def cpu_overrides(tiny_dir: Path, tok_dir: Path, corpus: Path) -> list[str]:
    return ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1", "--trainer.strategy=auto",
            f"--model.model={tiny_dir}", f"--data.tokenizer={tok_dir}", f"--data.corpus={corpus}"]


def test_a_production_run_without_its_run_directory_is_refused(tiny_qwen3_dir, qwen_tokenizer_dir, tmp_path,
                                                               monkeypatch):
    """No file names the run directory, so two runs can never share one by default: the command must."""
    from skill_distill.io import ConfigError

    monkeypatch.chdir(tmp_path)
    corpus = REPO / "data" / "quickstart" / "pool.jsonl"
    with pytest.raises(ConfigError, match="set trainer.default_root_dir"):
        train.main(composition(MODEL_FILES[0], CONFIGS / "runs" / "skill_sft.yaml")[:-1]
                   + cpu_overrides(tiny_qwen3_dir, qwen_tokenizer_dir, corpus), run=False)


@pytest.mark.parametrize("override", OVERRIDES, ids=rel)
def test_override_config_composes_after_its_base(override, tiny_qwen3_dir, qwen_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = REPO / "data" / "quickstart" / "pool.jsonl"
    data = REPO / "data" / "quickstart"
    # the experiment's arm config leaves the selection to the driver; the closed loop needs skill selection
    driver_args = [f"--data.tree={data / 'tree.json'}", f"--data.attribution={data / 'attribution.jsonl'}",
                   f"--data.profile={data / 'profile' / 'profile.json'}", "--data.selection.strategy=skill"] \
        if "experiments" in override.parts else [f"--trainer.default_root_dir={tmp_path / 'run'}"]
    after = [a for base in OVERRIDES[override] for a in ("--config", str(base))]
    cli = train.main([*after, "--config", str(override),
                      *cpu_overrides(tiny_qwen3_dir, qwen_tokenizer_dir, corpus), *driver_args], run=False)
    from callbacks import ReselectionCallback, SkillEvalCallback
    from skill_distill.generation.factory import VLLMConfig

    kinds = [type(c) for c in cli.trainer.callbacks]
    base = yaml.safe_load(OVERRIDES[override][0].read_text())
    evals_in_base = sum("SkillEvalCallback" in c["class_path"] for c in base["trainer"].get("callbacks", []))
    assert kinds.count(SkillEvalCallback) == evals_in_base and kinds.count(ReselectionCallback) == 1  # appended,
    # the base's callbacks kept
    reselect = next(c for c in cli.trainer.callbacks if isinstance(c, ReselectionCallback))
    assert isinstance(reselect.evaluation.backend, VLLMConfig)  # built from its class_path
    assert cli.datamodule.reselection.enabled
    assert cli.datamodule.selection.budget == base["data"]["selection"]["budget"]


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=rel)
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


@pytest.mark.parametrize("bad,message", [
    (["--data.selection.budget=0"], r"^selection.budget=0: must be at least 1$"),
    (["--data.skill_format.mode=window", "--data.skill_format.depth_start=2", "--data.skill_format.depth_end=1"],
     r"^skill_format.depth_end=1: must be >= depth_start \(2\)"),
    (["--data.skill_format.header=Skills:\n"], r"^skill_format.header=.*: must be one non-empty line"),
])
def test_a_bad_data_setting_stops_training_when_the_config_is_built(bad, message, tiny_qwen3_dir, qwen_tokenizer_dir,
                                                                     tmp_path, monkeypatch):
    """Checked when the configuration is instantiated, before the data are set up (formerly: inside setup)."""
    from skill_distill.io import ConfigError

    monkeypatch.chdir(tmp_path)
    corpus = REPO / "data" / "quickstart" / "pool.jsonl"
    with pytest.raises(ConfigError, match=message):
        train.main(["--config", str(CONFIGS / "quickstart.yaml"),
                    *cpu_overrides(tiny_qwen3_dir, qwen_tokenizer_dir, corpus), *bad], run=False)
    assert not any(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("path", [*TRAIN_CONFIGS, SFT_BASE], ids=rel)
def test_training_configs_stop_cleanly_and_name_their_run_directory_once(path):
    t = yaml.safe_load(path.read_text())["trainer"]
    kinds = [c["class_path"] for c in t["callbacks"]]
    # SIGTERM/SIGUSR1: agreed stop, checkpoint, exit 143; one checkpoint callback, so nothing is written twice
    assert "callbacks.checkpointing.ResumableCheckpoint" in kinds and "callbacks.preemption.PreemptionCallback" in kinds
    assert sum(k.endswith("ModelCheckpoint") or k.endswith("ResumableCheckpoint") for k in kinds) == 1
    # everything follows trainer.default_root_dir: no logger or callback names the run directory again
    rest = yaml.safe_dump({k: v for k, v in t.items() if k != "default_root_dir"})
    assert "runs/" not in rest and (path == SFT_BASE or t["default_root_dir"] not in rest)


def composed(model: Path, run: Path, tiny_dir: Path, tok_dir: Path) -> tuple:
    """A production run's command as the real CLI parser composes it (after the composed config instantiated on
    this CPU): the instantiated CLI and the parsed config."""
    corpus = REPO / "data" / "quickstart" / "pool.jsonl"
    cli = train.main([*composition(model, run), *cpu_overrides(tiny_dir, tok_dir, corpus)], run=False)
    cfg = cli.parser.parse_args(composition(model, run)).as_dict()
    for section in ("model", "data"):  # a chosen class's settings are its init_args (LightningCLI subclass mode)
        cfg[section] = {**cfg[section]["init_args"], "class_path": cfg[section]["class_path"]}
    return cli, cfg


@pytest.mark.parametrize("model,run", COMPOSITIONS, ids=lambda p: p.stem)
def test_every_composition_parses_instantiates_and_keeps_its_model(model, run, tiny_qwen3_dir, qwen_tokenizer_dir,
                                                                   tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli, cfg = composed(model, run, tiny_qwen3_dir, qwen_tokenizer_dir)
    from datamodules import SkillDataModule
    from lightning_modules import CausalLMModule

    assert isinstance(cli.model, CausalLMModule) and isinstance(cli.datamodule, SkillDataModule)
    name = yaml.safe_load(model.read_text())["model"]["model"]
    assert cfg["model"]["model"] == cfg["data"]["tokenizer"] == name  # the model file's, whatever the run
    assert cfg["trainer"]["default_root_dir"] == f"runs/{model.stem}/{run.stem}"
    run_changes = leaves(yaml.safe_load(run.read_text()) or {})
    for key, value in run_changes.items():  # the run file wins over the base and the model file
        if not key.startswith("trainer.callbacks"):
            section, *path = key.split(".")
            got = cfg[section]
            for part in path:
                got = got[part]
            assert got == value, key


@pytest.mark.parametrize("model,path", [(m, p) for m in MODEL_FILES for p in PRODUCTION], ids=lambda p: p.stem)
def test_production_configs_follow_the_paper(model, path, tiny_qwen3_dir, qwen_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, cfg = composed(model, path, tiny_qwen3_dir, qwen_tokenizer_dir)
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
        assert d["skill_format"]["mode"] == "full" and d["profile"] == f"data/omr/profile_{model.stem}/profile.json"
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
        assert e["backend"]["class_path"].endswith("VLLMConfig") and e["backend"]["init_args"]["max_model_len"] > 16384
        assert timeout_s > e["timeout_s"]  # ranks outwait the slowest evaluation


def test_length_overrides_exist():
    assert {p.name for p in LENGTH_OVERRIDES} >= {"skill_sft_16k.yaml", "skill_sft_32k.yaml"}


@pytest.mark.parametrize("path", LENGTH_OVERRIDES, ids=rel)
def test_length_override_composes_with_its_base(path, tiny_qwen3_dir, qwen_tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    length = {"16k": 16384, "32k": 32768}[path.stem.rsplit("_", 1)[1]]
    text = path.read_text()
    assert "DEPARTURE FROM THE PAPER" in text and f"{length:,}" in text and "8,192" in text  # stated in the file
    assert yaml.safe_load(SFT_BASE.read_text())["data"]["max_length"] == 8192
    cli, _ = composed(MODEL_FILES[0], path, tiny_qwen3_dir, qwen_tokenizer_dir)
    assert cli.datamodule.max_length == length
    assert cli.model.hparams.loss_implementation == "auto" and cli.model.loss_implementation == "linear_ce"
    # its own run directory everywhere, so it never resumes (or overwrites) the 8,192-token run
    run_dir = f"runs/{MODEL_FILES[0].stem}/{path.stem}"
    assert cli.trainer.default_root_dir == run_dir
    dirs = [getattr(c, "dirpath", None) or getattr(getattr(c, "evaluation", None), "dirpath", None)
            for c in cli.trainer.callbacks] + [lg.save_dir for lg in cli.trainer.loggers]
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


# ---- the SLURM scripts and the Makefile run the same compositions ----------------------------------------------------
def _slurm_copy(tmp_path: Path) -> tuple[Path, dict]:
    """The repository's configs and scripts in a scratch directory (the scripts cd into the submit directory and
    write logs there), and an environment whose ``srun`` (the cluster, the one external service here) writes the
    command it was given instead of running it."""
    import shutil
    import sys

    repo = tmp_path / "repo"
    shutil.copytree(CONFIGS, repo / "configs")
    shutil.copytree(REPO / "scripts" / "slurm", repo / "scripts" / "slurm")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("srun", "fake-python"):
        (bin_dir / name).write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$CALLED"\n')
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLED": str(tmp_path / "called.txt"), "SLURM_SUBMIT_DIR": str(repo),
           "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "8", "SLURM_JOB_ID": "7", "PYTHON": sys.executable}
    return repo, env


def test_the_slurm_train_job_runs_the_composition_its_run_file_names(tmp_path):
    import subprocess

    repo, env = _slurm_copy(tmp_path)
    called = tmp_path / "called.txt"
    done = subprocess.run(["bash", "scripts/slurm/train.sbatch", "qwen3_8b", "skill_sft", "--trainer.max_epochs=1"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert called.read_text().split("\n")[:-1] == [
        "--kill-on-bad-exit=1", env["PYTHON"], "train.py", "fit", *composition_text("qwen3_8b", "skill_sft"),
        "--ckpt_path", "last", "--trainer.max_epochs=1"]
    called.unlink()
    # a 2-node run file on a 1-node job stops before srun; an unknown model names what exists
    done = subprocess.run(["bash", "scripts/slurm/train.sbatch", "qwen3_4b", "skill_sft_2node"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "wants num_nodes=2 x devices=8, the job has 1 x 8" in done.stderr
    done = subprocess.run(["bash", "scripts/slurm/train.sbatch", "qwen3_70b", "skill_sft"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "configs/models/qwen3_70b.yaml does not exist (models: qwen3_4b qwen3_8b" in \
        done.stderr and not called.exists()
    # torchrun on each node (no SLURM): the same train.py arguments
    done = subprocess.run(["bash", "scripts/slurm/torchrun_train.sh", "qwen3_4b", "random_sft_2node"], cwd=repo,
                          env={**env, "PYTHON": "fake-python", "NNODES": "2", "NODE_RANK": "1"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    args = called.read_text().split("\n")[:-1]
    assert args[:2] == ["-m", "torch.distributed.run"] and "--node-rank" in args and args[args.index("--node-rank")
                                                                                           + 1] == "1"
    assert args[args.index("train.py"):] == ["train.py", "fit", *composition_text("qwen3_4b", "random_sft_2node"),
                                             "--ckpt_path", "last"]


def composition_text(model: str, run: str) -> list[str]:
    """The composition a run file's header names, as the scripts pass it (relative to the repository)."""
    return ["--config", "configs/base/sft.yaml", "--config", f"configs/models/{model}.yaml", "--config",
            f"configs/runs/{run}.yaml", "--trainer.default_root_dir", f"runs/{model}/{run}"]


def test_the_slurm_pipeline_trains_both_runs_of_its_model(tmp_path):
    import subprocess

    repo, env = _slurm_copy(tmp_path)
    done = subprocess.run(["bash", "scripts/slurm/pipeline.sh", "--dry-run"], cwd=repo,
                          env={**env, "SIZE": "4b", "TRAIN_NODES": "2"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    trains = [line for line in done.stderr.splitlines() if "scripts/slurm/train.sbatch" in line]
    assert [line.split("train.sbatch ")[1] for line in trains] == ["qwen3_4b skill_sft_2node",
                                                                    "qwen3_4b random_sft_2node"]
    assert all("--nodes 2" in line for line in trains)
    assert "--model runs/qwen3_4b/skill_sft_2node/hf_export/final" in done.stderr  # evaluated where it trained
