"""The third evidence round's on-policy arms (issue 25 part 5): the driver's on-policy command composes into the
on-policy classes; the report states the teacher, the on-policy arms and their declared contrasts; and, end to end
through the experiment's own commands on a tiny Qwen3, a finished work dir gains the teacher and an on-policy arm
without redoing the arm it already held."""

from __future__ import annotations

import gzip
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import evidence_report as er  # noqa: E402 - importable only after the sys.path.insert above
import skill_selection_cpu as driver  # noqa: E402

ON_POLICY_ARM = REPO / "configs" / "experiments" / "skill_selection_on_policy.yaml"


@pytest.mark.slow
def test_the_drivers_on_policy_command_builds_the_on_policy_classes(tiny_qwen3_dir, qwen_tokenizer_dir, tmp_path,
                                                                      monkeypatch):
    import train
    from datamodules import OnPolicyDataModule
    from lightning_modules import OnPolicyModule

    monkeypatch.chdir(tmp_path)
    data = REPO / "data" / "quickstart"
    cfg = driver.ExperimentConfig(tokenizer=str(qwen_tokenizer_dir))
    cmd = driver.train_cmd(cfg, tmp_path / "run", str(tiny_qwen3_dir), data / "pool.jsonl", data, epochs=3,
                           strategy="skill", seed=2, skill_format="off", profile=data / "profile" / "profile.json",
                           teacher=str(tiny_qwen3_dir), prompt_weighting="skill")
    args = cmd[cmd.index("fit") + 1:]
    assert args[:4] == ["--config", "configs/experiments/skill_selection_arm.yaml", "--config",
                        "configs/experiments/skill_selection_on_policy.yaml"]
    configs = [str(REPO / a) if a.startswith("configs/") else a for a in args if a != "--ckpt_path=last"]
    cli = train.main(configs, run=False)
    assert isinstance(cli.model, OnPolicyModule) and isinstance(cli.datamodule, OnPolicyDataModule)
    assert cli.model.distillation.teacher == str(tiny_qwen3_dir) and cli.model.hparams.lmbda == 1.0
    rollout = cli.model.rollout
    assert (rollout.backend, rollout.n, rollout.max_new_tokens, rollout.seed) == ("vllm", 2, 192, 2)
    assert cli.datamodule.prompt_weighting == "skill" and cli.datamodule.steps_per_epoch == 20
    assert cli.datamodule.examples_per_step == 8 and cli.datamodule.selection.budget == 160
    assert cli.trainer.max_epochs == 3 and cli.trainer.precision == "32-true"
    # the SFT arms' commands are exactly those of the runs already made: nothing on-policy, no tokenizer
    sft = driver.train_cmd(driver.ExperimentConfig(), tmp_path / "run", "s", data / "pool.jsonl", data, epochs=3,
                           strategy="skill", seed=0, skill_format="off", profile=None)
    assert [a.split("=")[0] for a in sft[sft.index("fit") + 1:]] == [
        "--config", "configs/experiments/skill_selection_arm.yaml", "--trainer.default_root_dir",
        "--trainer.max_epochs", "--seed_everything", "--model.model", "--model.learning_rate", "--data.corpus",
        "--data.tree", "--data.attribution", "--data.profile", "--data.selection.strategy",
        "--data.selection.profile_value", "--data.selection.budget", "--data.selection.seed", "--data.seed",
        "--data.selection.temperature", "--data.skill_format.mode", "--data.max_length", "--data.examples_per_step",
        "--ckpt_path"]


def test_shipped_round3_config_declares_the_on_policy_arms_after_the_sft_arms():
    from jsonargparse import ArgumentParser

    text = (REPO / "configs/experiments/evidence_round3.yaml").read_text()
    assert "added before any on-policy arm ran" in text
    parser = ArgumentParser()
    parser.add_function_arguments(driver.main)
    parser.add_argument("--config", action="config")
    p = parser.instantiate(parser.parse_args(["--config", str(REPO / "configs/experiments/evidence_round3.yaml")])
                           ).regimes[0]
    # the SFT arms keep their names and order (their run dirs and resume keys); the on-policy arms come after
    assert p.arms == ["random", "random_format", "skill", "skill_format", "skill_t05", "closed_loop", "on_policy",
                      "on_policy_skill"]
    assert p.budget == 160 and p.epochs == 3 and p.examples_per_step == 8 and p.teacher_epochs >= 1
    assert p.on_policy.backend == "vllm" and p.on_policy.max_new_tokens <= p.max_new_tokens
    assert driver.ARMS["on_policy"].strategy == "random" and driver.ARMS["on_policy"].prompt_weighting == "uniform"
    assert driver.ARMS["on_policy_skill"] == driver.ArmSpec(on_policy=True, prompt_weighting="skill")
    assert driver.ARMS["on_policy_skill"].strategy == driver.ARMS["skill"].strategy  # the skill arm's prompts


def test_report_states_the_teacher_the_on_policy_arms_and_their_contrasts():
    rng = np.random.default_rng(3)
    leaves = [f"T->leaf {k}" for k in range(5)]
    ids = [f"h{k}" for k in range(400)]
    chains_of = {i: [leaves[k % 5], leaves[(k + 2) % 5]] for k, i in enumerate(ids)}
    seeds = [0, 1]
    arms = ["random", "skill", "on_policy", "on_policy_skill"]
    p = {"random": 0.4, "skill": 0.4, "on_policy": 0.4, "on_policy_skill": 0.65}
    correct = {s: {a: dict(zip(ids, (rng.random(len(ids)) < p[a]).astype(float), strict=True)) for a in arms}
               for s in seeds}
    written = {s: {a: dict.fromkeys(ids) for a in arms} for s in seeds}
    shares = {s: dict.fromkeys(arms, [0.2] * 5) for s in seeds}
    distinct = {s: {"random": 160, "skill": 160, "on_policy": 150, "on_policy_skill": 120} for s in seeds}
    contrasts = {**driver.FORMAT_CONTRASTS, **er.ON_POLICY_CONTRASTS}
    r = er.analyse_round3(arms, leaves, ids, chains_of, seeds, correct, written, shares, distinct, contrasts,
                          resamples=400)
    assert set(r["contrasts"]) == set(er.ON_POLICY_CONTRASTS)  # the format contrasts' arms did not run
    assert r["arms"]["on_policy_skill"]["minus_random"]["verdict"] == "beats random"
    assert r["arms"]["on_policy"]["minus_random"]["verdict"] == "not separable"
    against_sft = r["contrasts"]["on-policy against SFT, skill prompts"]
    assert against_sft["arms"] == ["on_policy_skill", "skill"] and against_sft["verdict"] == "beats random"
    r["teacher"] = {"base": "asset:smollm2-135m-instruct", "accuracy": 0.8125, "examples": 4000, "epochs": 1}
    text = er.regime_section("P", "crafted", r, "passed", "Cost: none.", "results/x")
    assert "Teacher of the on-policy arms: asset:smollm2-135m-instruct trained by SFT on all 4000 pool problems, 1 " \
           "epoch(s); held-out accuracy 81.2%." in text
    assert "| on_policy | " in text and "| 150 |" in text
    assert "| on-policy against SFT, skill prompts (on_policy_skill - skill) |" in text
    assert "| beats skill |" in text and "| on-policy, skill prompts against uniform (on_policy_skill - on_policy) |" \
        in text
    advice = er.advice({"P": r})
    assert not any("skill-aware format" in line for line in advice)  # on-policy contrasts are not format advice
    said = advice[-1]
    assert said.startswith("- On-policy distillation with skill-weighted prompts against SFT on the same prompts "
                           "(regime P, seeds 0, 1, on_policy_skill - skill): ")
    assert "(beats skill)" in said and "use it in a setting like this one" in said
    assert "Each on-policy arm against random SFT: `on_policy` " in said and "(not separable), `on_policy_skill` " \
        in said and said.count("(beats random)") == 1
    # without the on-policy arms the advice says they were not measured
    r.pop("teacher")
    r["contrasts"] = {}
    assert er.advice({"P": r})[-1].startswith("- On-policy distillation with skill-weighted prompts against SFT "
                                              "on the same prompts: not measured")


def _timings(cfg: driver.ExperimentConfig) -> dict:
    return json.loads((Path(cfg.results_dir) / "timings_try0.json").read_text())


@pytest.mark.slow
@pytest.mark.vllm
def test_a_finished_work_dir_gains_the_teacher_and_an_on_policy_arm_without_redoing_its_arm(tmp_path, capsys):
    """Tiny regime P through the experiment's own commands: make-composed-data, warm-up, profile, the random arm
    (a finished work dir); then the same config with an on-policy arm added: the teacher is trained and evaluated,
    the on-policy arm trains on vLLM rollouts toward it and is evaluated, the report shows both, and the random
    arm's run (its export, evaluation and timings) is left as it was. The profile and evaluations run on the HF
    backend (the driver's ``generation_backend``): the on-policy rollouts are this test's vLLM, and four engine
    starts for a few 8-token answers cost more than the rest of the test."""
    cfg = driver.ExperimentConfig(
        name="P", title="tiny", work_dir=str(tmp_path / "work"), results_dir=str(tmp_path / "results"),
        student="asset:tiny-qwen3", tokenizer="asset:qwen3-tokenizer", data_kind="composed", pool_size=24,
        heldout_per_leaf=1, tries=[driver.WarmupTry(warmup_per_leaf=1, warmup_epochs=1)],
        precheck=driver.PreCheck(kind="concentration", enforce=False), arms=["random"], budget=8, epochs=1,
        examples_per_step=4, max_length=256, max_new_tokens=8, bootstrap_resamples=50, generation_backend="hf",
        on_policy=driver.OnPolicySettings(backend="vllm", n=2, max_new_tokens=8, canary_every_n_syncs=1))
    report = tmp_path / "README.md"
    run = dict(seeds=[0], update_readme_section=False, report_file=str(report), report_header="# tiny")
    driver.main(regimes=[cfg], **run)
    random_dir = Path(cfg.work_dir) / "try0" / "seed0" / "random"
    export = driver.exported(random_dir)
    before = {p: p.stat().st_mtime_ns for p in [*export.rglob("*"), random_dir / "eval" / "report.json"]
              if p.is_file()}
    timings_before = _timings(cfg)
    assert "| random | " in report.read_text() and "| on_policy |" not in report.read_text()
    capsys.readouterr()

    grown = replace(cfg, arms=["random", "on_policy"])
    driver.main(regimes=[grown], **run)
    printed = capsys.readouterr().out
    commands = [line for line in printed.splitlines() if line.startswith("$ ")]
    # the finished arm is not trained or evaluated again; the teacher and the on-policy arm are
    assert not any(str(random_dir) in c for c in commands)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    timings = _timings(grown)
    assert {k: timings[k] for k in timings_before} == timings_before
    assert {"shared:teacher:train", "shared:teacher:evaluate", "seed0:on_policy:train",
            "seed0:on_policy:evaluate"} <= set(timings)
    teacher_cmd = next(c for c in commands if "/teacher " in c and "train.py" in c)
    assert "--data.selection.strategy=all" in teacher_cmd and "--model.model=asset:tiny-qwen3" in teacher_cmd
    # the on-policy arm's rollouts: 2 steps (budget 8 / 4 prompts) x 4 prompts x n=2, scored by the teacher
    op_dir = Path(cfg.work_dir) / "try0" / "seed0" / "on_policy"
    steps = [json.loads(line) for line in (op_dir / "rollouts" / "rank0.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [0, 1] and all(len(s["rollouts"]) == 8 for s in steps)
    assert all(len(r["teacher_logprobs"]) == len(r["completion_tokens"]) > 0 for s in steps for r in s["rollouts"])
    metrics = (op_dir / "logs" / "metrics.csv").read_text()
    assert "train/reverse_kl" in metrics and "train/canary_error" in metrics
    results = Path(cfg.results_dir)
    for name in ("teacher", "seed0_random", "seed0_on_policy"):
        with gzip.open(results / "records" / f"{name}.jsonl.gz", "rt") as f:
            assert len(f.read().splitlines()) > 0
    text = report.read_text()
    assert "| on_policy | " in text and "Teacher of the on-policy arms: asset:tiny-qwen3 trained by SFT on all" in text
    assert list(json.loads((results / "results.json").read_text())["arms"]) == ["random"]
    saved = json.loads((results / "results_on_policy.json").read_text())
    drawn = saved["arms"]["on_policy"]["distinct_examples"][0]
    assert 1 <= drawn <= 8 and saved["teacher"]["examples"] == len(
        (Path(cfg.work_dir) / "try0" / "data" / "train_pool.jsonl").read_text().splitlines())
    # which teacher the arm distilled from, by its weights: committed with the arm and in the results
    teacher_weights = driver.weights_digest(driver.exported(Path(cfg.work_dir) / "try0" / "teacher"))
    assert list(teacher_weights) == ["model.safetensors"] and saved["teacher"]["export_sha256"] == teacher_weights
    assert json.loads(driver.committed_arm(grown, 0, "on_policy")[1].read_text())["teacher_sha256"] == teacher_weights
    # run again with every arm finished: nothing is made, and the rewritten report still names the teacher (it came
    # only from making it before)
    driver.main(regimes=[grown], **run)
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert "Teacher of the on-policy arms: asset:tiny-qwen3 trained by SFT on all" in report.read_text()
    again = json.loads((results / "results_on_policy.json").read_text())
    assert again["teacher"] == saved["teacher"]


def test_every_seeds_sft_arms_run_before_any_on_policy_arm(tmp_path, monkeypatch):
    """The driver's order: the SFT arms of all seeds, then the on-policy arms (each costs several SFT arms), with the
    report rewritten per seed over the SFT arms and once, at the end, over every arm."""
    calls: list[tuple] = []

    def run_arms(cfg, prep, seed):
        if cfg.name == "P":
            calls.append(("train", seed, tuple(cfg.arms)))
        return {arm: {"seed": seed} for arm in cfg.arms}

    monkeypatch.setattr(driver, "prepare_regime", lambda cfg, make=True: {"dir": tmp_path / cfg.name})
    monkeypatch.setattr(driver, "run_arms", run_arms)
    def write_round3(regimes, prepared, seeds, report, header, on_policy=None):
        assert set(on_policy or {}) <= {"P"}  # a regime without on-policy arms gets no on-policy section
        calls.append(("report", tuple(seeds["P"]), tuple(a for cfg in regimes if cfg.name == "P" for a in cfg.arms))
                     + ((tuple(on_policy["P"][1]), tuple(on_policy["P"][0].arms)) if on_policy else ()))

    monkeypatch.setattr(driver, "write_round3", write_round3)
    cfg = driver.ExperimentConfig(name="P", arms=["random", "on_policy", "skill", "on_policy_skill"])
    sft_only = driver.ExperimentConfig(name="concentrated", arms=["random", "skill_t05"])
    driver.main([cfg, sft_only], seeds=[0, 1], report_file=str(tmp_path / "README.md"))
    sft, on_policy = ("random", "skill"), ("on_policy", "on_policy_skill")
    # the last report: the SFT arms over their seeds, and every arm (in the configured order) over the seeds with all
    # (seed-major: each seed's P arms, then its concentrated arms, each followed by a report)
    assert calls == [("train", 0, sft), ("report", (0,), sft), ("report", (0,), sft),
                     ("train", 1, sft), ("report", (0, 1), sft), ("report", (0, 1), sft),
                     ("train", 0, on_policy), ("train", 1, on_policy),
                     ("report", (0, 1), sft, (0, 1), ("random", "on_policy", "skill", "on_policy_skill"))]


def test_regime_major_finishes_the_named_regimes_seeds_in_order_and_reports_each_over_its_own(tmp_path, monkeypatch):
    """``--regime_major --only [concentrated, P]``: every seed of the cheap regime first, then the other's; a seed an
    earlier run finished (exported model and evaluation on disk) is not run again and is in the report from the
    first rewrite; each regime is reported over its own finished seeds."""
    calls: list[tuple] = []

    def run_arms(cfg, prep, seed):
        calls.append(("train", cfg.name, seed))
        return {arm: {"seed": seed} for arm in cfg.arms}

    monkeypatch.setattr(driver, "prepare_regime", lambda cfg, make=True: {"dir": tmp_path / cfg.name})
    monkeypatch.setattr(driver, "run_arms", run_arms)
    monkeypatch.setattr(driver, "write_round3", lambda regimes, prepared, seeds, report, header, on_policy=None:
                        calls.append(("report", [cfg.name for cfg in regimes],
                                      {k: tuple(v) for k, v in seeds.items()})))
    # seed 0 of P was finished by an earlier run
    for arm in ("random", "skill"):
        run_dir = tmp_path / "P" / "seed0" / arm
        driver.exported(run_dir).mkdir(parents=True)
        driver.write_json(driver.RunLayout(run_dir).eval_dir / "report.json", {})
    p = driver.ExperimentConfig(name="P", arms=["random", "skill"])
    c = driver.ExperimentConfig(name="concentrated", arms=["random", "skill_t05"])
    driver.main([p, c], seeds=[0, 1], only=["concentrated", "P"], regime_major=True,
                report_file=str(tmp_path / "README.md"))
    regimes = ["P", "concentrated"]  # the report keeps the config's order
    assert calls == [("train", "P", 0),  # collected, not trained: run_arms of a finished seed only reads its files
                     ("train", "concentrated", 0), ("report", regimes, {"P": (0,), "concentrated": (0,)}),
                     ("train", "concentrated", 1), ("report", regimes, {"P": (0,), "concentrated": (0, 1)}),
                     ("train", "P", 1), ("report", regimes, {"P": (0, 1), "concentrated": (0, 1)})]
