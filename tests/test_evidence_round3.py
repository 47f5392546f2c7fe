"""The third evidence round's decision machinery on crafted inputs: the concentration pre-check (on crafted profiles,
through the selection's own target), the two-level bootstrap and the verdict rule (a known effect is found, a null
is not), and the report written from crafted per-problem records."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import evidence_report as er  # noqa: E402 - importable only after the sys.path.insert above
import skill_selection_cpu as driver  # noqa: E402

from skill_distill.composed import run_make_composed_data  # noqa: E402
from skill_distill.io import ConfigError, write_json  # noqa: E402


def _profile(path: Path, leaves: list[str], accuracy: dict[str, float]) -> Path:
    nodes = [{"chain": leaf, "is_leaf": True, "judged": 40, "correct": round(40 * accuracy[leaf]),
              "accuracy": accuracy[leaf]} for leaf in leaves]
    topics = sorted({leaf.split("->")[0] for leaf in leaves})
    nodes += [{"chain": t, "is_leaf": False, "judged": 40, "correct": 20, "accuracy": 0.5} for t in topics]
    write_json(path, {"nodes": nodes})
    return path


@pytest.fixture(scope="module")
def composed_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("composed")
    run_make_composed_data(str(data), seed=0, pool_size=400, heldout_per_leaf=2)
    (data / "train_pool.jsonl").write_bytes((data / "pool.jsonl").read_bytes())
    import json

    leaves = [f"{t['name']}->{leaf['name']}" for t in json.loads((data / "tree.json").read_text())["children"]
              for leaf in t["children"]]
    return data, leaves


def test_concentration_check_passes_a_spread_profile_and_fails_concentrated_and_zero_ones(composed_data, tmp_path):
    data, leaves = composed_data
    cfg = driver.ExperimentConfig(precheck=driver.PreCheck(kind="concentration", min_effective_share=0.6,
                                                           enforce=True))
    spread = {leaf: 0.3 + 0.4 * k / (len(leaves) - 1) for k, leaf in enumerate(leaves)}  # 0.3 .. 0.7
    target = driver.target_shares(data, _profile(tmp_path / "a.json", leaves, spread), budget=40)
    assert abs(sum(target.values()) - 1) < 1e-9 and set(target) == set(leaves)
    check = driver.precheck(cfg, spread, target)
    assert check["passed"] and check["concentration"]["effective_leaves"] > 0.9 * len(leaves)
    # a few weak leaves take the budget: 1/acc weights of 0.02 against 0.9 -> effective leaves far below 0.6 x 25
    skewed = {leaf: (0.02 if k < 3 else 0.9) for k, leaf in enumerate(leaves)}
    target = driver.target_shares(data, _profile(tmp_path / "b.json", leaves, skewed), budget=40)
    check = driver.precheck(cfg, skewed, target)
    assert not check["passed"] and check["concentration"]["effective_leaves"] < 0.6 * len(leaves)
    # a spread profile with one leaf at zero accuracy is refused even though it is not concentrated
    zero = dict(spread, **{leaves[0]: 0.0})
    check = driver.precheck(cfg, zero, {leaf: 1 / len(leaves) for leaf in leaves})
    assert not check["passed"] and check["concentration"]["leaves_at_zero"] == [leaves[0]]
    assert "effective leaves at T=1 25.0 of 25 (required >= 15.0), at zero: 1" in driver.precheck_line(check, 25)
    # and a leaf without a share fails too
    no_share = driver.concentration({leaf: 1 / 24 for leaf in leaves[1:]}, spread, 0.6)
    assert not no_share["passed"] and no_share["leaves_without_share"] == [leaves[0]]


def test_bad_round3_settings_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="precheck.kind must be band or concentration"):
        driver.ExperimentConfig(precheck=driver.PreCheck(kind="spread")).validate()
    with pytest.raises(ConfigError, match="data_kind must be single or composed"):
        driver.ExperimentConfig(data_kind="mixed").validate()


def _records(rng, n_problems: int, p: float) -> np.ndarray:
    return (rng.random(n_problems) < p).astype(float)


def test_two_level_bootstrap_finds_a_known_effect_and_calls_a_null_not_separable():
    rng = np.random.default_rng(0)
    n, seeds = 600, 4
    strata = np.repeat(np.arange(12), n // 12)
    random_arm = np.array([_records(rng, n, 0.40) for _ in range(seeds)])
    better = np.array([_records(rng, n, 0.55) for _ in range(seeds)])  # +15 points
    null = np.array([_records(rng, n, 0.40) for _ in range(seeds)])
    worse = np.array([_records(rng, n, 0.25) for _ in range(seeds)])
    up = er.effect(better - random_arm, strata, 1000)
    assert up["verdict"] == "beats random" and 0.10 < up["mean"] < 0.20 and up["ci_low"] > 0
    flat = er.effect(null - random_arm, strata, 1000)
    assert flat["verdict"] == "not separable" and flat["ci_low"] < 0 < flat["ci_high"]
    assert er.effect(worse - random_arm, strata, 1000)["verdict"] == "worse"
    assert 0 < flat["detectable"] < 0.15  # a 15-point effect is within what this design detects
    # the seed level is resampled: seeds that disagree widen the interval beyond the problems-only one
    split = np.vstack([np.ones((2, n)), -np.ones((2, n))]) * 0.2
    wide = er.effect(split, strata, 1000)
    assert wide["verdict"] == "not separable" and wide["ci_high"] - wide["ci_low"] > 0.2
    assert er.verdict(0.01, 0.05) == "beats random" and er.verdict(-0.05, -0.01) == "worse"
    assert er.verdict(-0.01, 0.05) == "not separable" and er.verdict(0.0, 0.05) == "not separable"


def test_label_accuracy_compares_the_written_block_with_the_attributed_chains():
    attributed = {"1": ["A->x", "B->y"], "2": ["A->x", "C->z"], "3": ["B->y", "C->z"]}
    written = {"1": ["A->x", "B->y"], "2": ["A->x"], "3": None}
    lab = er.label_accuracy(written, attributed)
    assert lab["exact"] == pytest.approx(1 / 3) and lab["precision"] == 1.0 and lab["recall"] == pytest.approx(3 / 6)


def test_report_from_crafted_records_states_table_verdicts_and_advice():
    rng = np.random.default_rng(1)
    leaves = [f"T->leaf {k}" for k in range(6)]
    ids = [f"h{k}" for k in range(300)]
    chains_of = {i: [leaves[k % 6], leaves[(k + 1) % 6]] for k, i in enumerate(ids)}
    seeds = [0, 1, 2]
    arms = ["random", "random_format", "skill", "skill_format"]
    p = {"random": 0.4, "random_format": 0.4, "skill": 0.6, "skill_format": 0.1}
    correct = {s: {a: dict(zip(ids, _records(rng, len(ids), p[a]), strict=True)) for a in arms} for s in seeds}
    written = {s: {a: {i: (chains_of[i][:1] if a.endswith("format") else None) for i in ids} for a in arms}
               for s in seeds}
    shares = {s: {a: list(np.full(6, 1 / 6)) if a.startswith("random") else [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]
                  for a in arms} for s in seeds}
    distinct = {s: dict.fromkeys(arms, 160) for s in seeds}
    r = er.analyse_round3(arms, leaves, ids, chains_of, seeds, correct, written, shares, distinct,
                          driver.FORMAT_CONTRASTS, resamples=500)
    assert r["arms"]["skill"]["minus_random"]["verdict"] == "beats random"
    assert r["arms"]["skill_format"]["minus_random"]["verdict"] == "worse"
    assert r["arms"]["random_format"]["minus_random"]["verdict"] == "not separable"
    assert r["contrasts"]["format under skill"]["verdict"] == "worse"
    assert r["arms"]["skill_format"]["label_accuracy"]["exact"] == 0 and r["arms"]["skill"]["label_accuracy"] is None
    assert r["arms"]["skill_format"]["leaves_10_below_random"] == leaves  # 30 points below on every leaf
    assert r["min_occurrences"] == 100
    text = er.regime_section("P", "crafted", r, "passed", "Cost: none.", "results/x")
    assert "| skill | " in text and "| beats random | 160 | no block |" in text
    assert "| skill_format | " in text and "| worse | 160 | 0% / 100% |" in text
    assert "| format under skill (skill_format - skill) |" in text and "| worse than skill |" not in text
    lines = er.advice({"P": r, "concentrated": None})
    assert lines[0].startswith("- Regime P: skill beat random; the largest gain was `skill`")
    assert "Worse than random: skill_format" in lines[0]
    assert lines[1].startswith("- Regime concentrated: the pre-check failed")
    assert lines[-1].startswith("- On-policy distillation")


def test_shipped_round3_config_declares_the_design(tmp_path):
    from jsonargparse import ArgumentParser

    text = (REPO / "configs/experiments/evidence_round3.yaml").read_text()
    assert "Declared before running (2026-12-06)" in text
    parser = ArgumentParser()
    parser.add_function_arguments(driver.main)
    parser.add_argument("--config", action="config")
    cfg = parser.parse_args(["--config", str(REPO / "configs/experiments/evidence_round3.yaml")])
    regimes = parser.instantiate(cfg).regimes
    assert [r.name for r in regimes] == ["P", "concentrated"]
    p, conc = regimes
    for r in regimes:
        r.validate()
    assert p.precheck.kind == "concentration" and p.precheck.enforce and len(p.tries) <= driver.MAX_TRIES
    assert p.pool_size >= 20 * p.budget and p.heldout_per_leaf >= 100 and conc.heldout_per_leaf >= 100
    assert set(p.arms) == {"random", "random_format", "skill", "skill_format", "skill_t05", "closed_loop", "on_policy",
                           "on_policy_skill"}
    assert conc.arms == ["random", "skill_t05"] and conc.order_free_keys
    assert p.student_per_seed and not conc.student_per_seed and "9. Declared 2026-12-07, before any arm" in text
    assert cfg.report_file == "results/evidence/README.md" and not cfg.update_readme_section


def _crafted_runs(data, tmp_path, arms, seeds, rng, accuracy=None):
    """Per seed and arm: held-out records (``accuracy[arm]`` correct at random, else 0.5) and a trained selection."""
    import json

    heldout = [json.loads(line) for line in (data / "heldout.jsonl").read_text().splitlines()]
    chains = {r["id"]: r["chains"] for r in map(json.loads, (data / "attribution.jsonl").read_text().splitlines())}
    pool_ids = [json.loads(line)["id"] for line in (data / "pool.jsonl").read_text().splitlines()]
    runs = {}
    for seed in seeds:
        runs[seed] = {}
        for arm in arms:
            path = tmp_path / f"records_{seed}_{arm}.jsonl"
            path.write_text("".join(json.dumps({"id": r["id"],
                                                "correct": bool(rng.random() < (accuracy or {}).get(arm, 0.5)),
                                                "skills_written": (["->".join(chains[r["id"]][0])]
                                                                   if arm == "random_format" else None)}) + "\n"
                                    for r in heldout))
            trained = pool_ids[:160] if arm != "skill" else pool_ids[100:260]
            runs[seed][arm] = {"records": str(path), "trained_ids": trained * 3, "distinct_examples": 160}
    return runs


def test_the_report_file_is_written_from_finished_arms_and_names_a_regime_that_stopped(composed_data, tmp_path):
    import json

    data, leaves = composed_data
    arms = ["random", "random_format", "skill"]
    runs = _crafted_runs(data, tmp_path, arms, [0, 1], np.random.default_rng(2))
    timings = tmp_path / "timings.json"
    write_json(timings, {"shared:warm-up": 600, "seed0:random:train": 900, "seed1:random:train": 960})
    profile = dict.fromkeys(leaves, 0.5)
    check = driver.precheck(driver.ExperimentConfig(precheck=driver.PreCheck(kind="concentration")), profile,
                            dict.fromkeys(leaves, 1 / len(leaves)))
    done = driver.ExperimentConfig(name="P", title="crafted", arms=arms, results_dir=str(tmp_path / "p"),
                                   precheck=driver.PreCheck(kind="concentration"), bootstrap_resamples=200)
    stopped = driver.ExperimentConfig(name="concentrated", title="stopped", results_dir=str(tmp_path / "c"))
    write_json(tmp_path / "c" / "tries.json", [{"try": 0, "precheck": {"kind": "band", "leaves_in_band": 3,
                                                                       "band": [0.05, 0.9], "leaves_at_zero": ["x"]},
                                                 "profile_leaf_accuracy": {"x": 0.0, "y": 0.5}}])
    prepared = {"P": {"data": data, "runs": runs, "timings": timings, "profile": profile, "precheck": check,
                      "try": 0},
                "concentrated": None}
    report = tmp_path / "README.md"
    driver.write_round3([done, stopped], prepared, {"P": [0, 1], "concentrated": []}, report, "# Round 3 (crafted)")
    text = report.read_text()
    assert text.startswith("# Round 3 (crafted)\n\n### Regime P: crafted")
    assert "effective leaves at T=1 25.0 of 25 (required >= 15.0), at zero: 0, without a share: 0 -> passed" in text
    assert "| random_format | " in text and "| skill | " in text
    assert "| format under random (random_format - random)" in text
    # random_format writes the first of 2-3 attributed chains: never the exact set, every label right
    assert "| 0% / 100% |" in text and "| no block |" in text
    assert "seed 0 15 min, seed 1 16 min" in text
    assert ("### Regime concentrated: stopped\n\nNo try passed the pre-check (try 0: 3 of 2 leaves in [0.05, 0.9], "
            "at zero: 1;") in text
    assert "- Regime concentrated: the pre-check failed, no arm was trained" in text
    saved = json.loads((tmp_path / "p" / "results.json").read_text())
    assert saved["regime"] == "P" and set(saved["arms"]) == set(arms) and saved["seeds"] == [0, 1]


def test_on_policy_arms_of_fewer_seeds_get_their_own_section_and_the_sft_arms_keep_all_seeds(composed_data, tmp_path):
    """Regime P's on-policy arms ran for seeds 2-3 only (seeds 0-1 came from a student this machine cannot re-make):
    the SFT section stays over all four seeds, and a second section puts every arm over seeds 2-3, where the
    on-policy contrasts are paired; the advice on on-policy distillation names those seeds."""
    import json

    data, leaves = composed_data
    sft_arms, every_arm = ["random", "skill"], ["random", "skill", "on_policy", "on_policy_skill"]
    runs = _crafted_runs(data, tmp_path, sft_arms, [0, 1, 2, 3], np.random.default_rng(5))
    on_policy = _crafted_runs(data, tmp_path, ["on_policy", "on_policy_skill"], [2, 3],
                              np.random.default_rng(6), accuracy={"on_policy": 0.5, "on_policy_skill": 0.95})
    for seed in (2, 3):
        runs[seed].update(on_policy[seed])
    timings = tmp_path / "timings.json"
    write_json(timings, {"shared:warm-up": 600})
    profile = dict.fromkeys(leaves, 0.5)
    check = driver.precheck(driver.ExperimentConfig(precheck=driver.PreCheck(kind="concentration")), profile,
                            dict.fromkeys(leaves, 1 / len(leaves)))
    full = driver.ExperimentConfig(name="P", title="crafted", arms=every_arm, results_dir=str(tmp_path / "p"),
                                   precheck=driver.PreCheck(kind="concentration"), bootstrap_resamples=200)
    sft = dataclasses.replace(full, arms=sft_arms)
    prepared = {"P": {"data": data, "runs": runs, "timings": timings, "profile": profile, "precheck": check,
                      "try": 0}}
    report = tmp_path / "README.md"
    driver.write_round3([sft], prepared, {"P": [0, 1, 2, 3]}, report, "# crafted",
                        on_policy={"P": (full, [2, 3])})
    text = report.read_text()
    sft_part, on_policy_part = text.split("### Regime P, every arm over the seeds with on-policy arms: crafted")
    assert "seeds 0, 1, 2, 3." in sft_part and "| on_policy |" not in sft_part
    assert "seeds 2, 3." in on_policy_part and "| on_policy_skill | " in on_policy_part
    assert "| on-policy against SFT, skill prompts (on_policy_skill - skill) |" in on_policy_part
    assert "numbers: `" + str(tmp_path / "p") + "/results_on_policy.json`" in on_policy_part
    saved = json.loads((tmp_path / "p" / "results.json").read_text())
    assert saved["seeds"] == [0, 1, 2, 3] and list(saved["arms"]) == sft_arms and "on_policy" not in saved
    saved = json.loads((tmp_path / "p" / "results_on_policy.json").read_text())
    assert saved["seeds"] == [2, 3] and list(saved["arms"]) == every_arm
    assert saved["contrasts"]["on-policy against SFT, skill prompts"]["verdict"] == "beats random"
    assert ("- On-policy distillation with skill-weighted prompts against SFT on the same prompts (regime P, seeds "
            "2, 3, on_policy_skill - skill): ") in text


def test_a_step_killed_by_a_signal_is_started_again_and_a_failing_step_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(driver, "KILLED_STEP_WAIT_S", 0)
    marker = tmp_path / "ran_once"
    # killed (as by the OOM killer) the first time, succeeds the second
    script = (f"import os, pathlib, signal; p = pathlib.Path({str(marker)!r})\n"
              "if not p.exists():\n    p.touch(); os.kill(os.getpid(), signal.SIGKILL)\nprint('second run')")
    timings = tmp_path / "timings.json"
    driver.run([sys.executable, "-c", script], tmp_path / "step.log", timings, "seed0:x:train")
    assert "second run" in (tmp_path / "step.log").read_text() and "seed0:x:train" in timings.read_text()
    with pytest.raises(driver.DataError, match=r"step failed \(exit 3\); see .*bad.log"):
        driver.run([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "bad.log")
    always = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    with pytest.raises(driver.DataError, match=r"exit -9"):
        driver.run(always, tmp_path / "killed.log")


def test_a_step_stopped_with_the_driver_keeps_the_time_it_ran_and_its_resume_adds_to_it(tmp_path):
    """A step's time is counted while it runs (every ``TIMING_FLUSH_S``): the driver killed with -9 during a step
    (as at a session's end) leaves the seconds the step ran in the timings file, and the resumed step adds its own."""
    import json
    import os
    import signal
    import subprocess
    import time

    timings, started = tmp_path / "timings.json", tmp_path / "started"
    step = f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); time.sleep(60)"
    driver_code = (f"import sys; sys.path.insert(0, {str(REPO / 'experiments')!r}); import skill_selection_cpu as d\n"
                   f"d.TIMING_FLUSH_S = 0.2\n"
                   f"d.run([sys.executable, '-c', {step!r}], d.Path({str(tmp_path / 'step.log')!r}), "
                   f"d.Path({str(timings)!r}), 'seed0:on_policy:train')")
    proc = subprocess.Popen([sys.executable, "-c", driver_code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(2.0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    first = json.loads(timings.read_text())["seed0:on_policy:train"]
    assert 1.5 <= first <= 30
    driver.run([sys.executable, "-c", "import time; time.sleep(0.5)"], tmp_path / "step.log", timings,
               "seed0:on_policy:train")
    assert json.loads(timings.read_text())["seed0:on_policy:train"] >= first + 0.5


def _committed_regime(tmp_path: Path, composed_data, leaves: list[str]) -> driver.ExperimentConfig:
    """A regime as a fresh checkout finds it: nothing in the work directory; in the committed results, a tries log
    (try 0 failed, try 1 passed with its profile) and seed 0's records of two fixed-selection arms, one with its
    trained ids, one committed before ids were kept."""
    import gzip
    import json

    data, _ = composed_data
    cfg = driver.ExperimentConfig(
        name="P", title="fresh checkout", work_dir=str(tmp_path / "work"), results_dir=str(tmp_path / "results"),
        data_kind="composed", pool_size=400, heldout_per_leaf=2, budget=16, examples_per_step=8,
        tries=[driver.WarmupTry(warmup_per_leaf=1, warmup_epochs=1), driver.WarmupTry(warmup_per_leaf=2)],
        precheck=driver.PreCheck(kind="concentration", enforce=True), arms=["random", "skill"],
        bootstrap_resamples=50)
    results = Path(cfg.results_dir)
    profile = json.loads(_profile(tmp_path / "p.json", leaves, {leaf: 0.3 + 0.02 * i for i, leaf in
                                                                 enumerate(leaves)}).read_text())
    failed = {"kind": "concentration", "passed": False, "enforced": True, "concentration": {
        "effective_leaves": 9.0, "leaves": 25, "required_effective": 15.0, "leaves_at_zero": [],
        "leaves_without_share": []}}
    passed = {**failed, "passed": True}
    write_json(results / "tries.json", [
        {"try": 0, "precheck": failed, "profile_leaf_accuracy": {leaf: 0.0 for leaf in leaves}, "profile": {}},
        {"try": 1, "precheck": passed, "profile_leaf_accuracy": driver.leaf_profile(tmp_path / "p.json"),
         "profile": profile}])
    heldout = [json.loads(line)["id"] for line in (data / "heldout.jsonl").read_text().splitlines()]
    for arm in cfg.arms:
        records, trained = driver.committed_arm(cfg, 0, arm)
        records.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(records, "wt") as f:
            f.writelines(json.dumps({"id": i, "correct": k % 2 == 0}) + "\n" for k, i in enumerate(heldout))
    pool_ids = [json.loads(line)["id"] for line in (data / "pool.jsonl").read_text().splitlines()]
    write_json(driver.committed_arm(cfg, 0, "random")[1], {"trained_ids": pool_ids[:16] * 3,
                                                            "distinct_examples": 16})
    return cfg


def _only_make_data(monkeypatch) -> list[str]:
    """The driver's steps run from here on: make-data runs, any other step fails the test (committed arms are read,
    not trained). Returns the steps asked for."""
    real_run, commands = driver.run, []

    def run(cmd, log, timings=None, step=""):
        commands.append(step)
        if step != "shared:make-data":
            raise AssertionError(f"a run from committed arms ran {step}")
        real_run(cmd, log, timings, step)

    monkeypatch.setattr(driver, "run", run)
    return commands


@pytest.mark.slow  # make-composed-data's process and select-report's chart
def test_a_fresh_checkout_reports_committed_seeds_without_training_and_does_not_redo_a_failed_try(
        composed_data, tmp_path, monkeypatch):
    """Sessions may start on a new machine with only the committed results: a try the log records as failed is not
    made again, the passed try's student is not made while no arm must train, an arm with committed records and
    ids is read, not trained, and one committed before ids were kept gets its fixed selection recomputed."""
    import json

    _, leaves = composed_data
    cfg = _committed_regime(tmp_path, composed_data, leaves)
    commands = _only_make_data(monkeypatch)
    report = tmp_path / "README.md"
    driver.main([cfg], seeds=[0], update_readme_section=False, report_file=str(report), report_header="# fresh")
    assert commands == ["shared:make-data"]  # try 1's data only: try 0 (failed in the log) is not made again
    assert not (Path(cfg.work_dir) / "try0").exists() and not (Path(cfg.work_dir) / "try1" / "warmup").exists()
    recomputed = json.loads(driver.committed_arm(cfg, 0, "skill")[1].read_text())
    assert recomputed["source"].startswith("recomputed") and recomputed["distinct_examples"] == 16
    assert len(recomputed["trained_ids"]) == 16 * cfg.epochs
    saved = json.loads((Path(cfg.results_dir) / "results.json").read_text())
    assert saved["seeds"] == [0] and saved["try"] == 1 and saved["arms"]["random"]["distinct_examples"] == [16]
    assert "### Regime P: fresh checkout" in report.read_text()


@pytest.mark.slow  # make-composed-data's process and select-report's chart
def test_a_regime_whose_on_policy_arms_have_not_run_keeps_its_sft_report(composed_data, tmp_path, monkeypatch):
    """A regime with on-policy arms still to run, reported while another regime trains: the report after the
    on-policy pass keeps its SFT arms over their finished seeds (it raised an AxisError over zero seeds before)."""
    import json

    _, leaves = composed_data
    with_on_policy = dataclasses.replace(_committed_regime(tmp_path / "p", composed_data, leaves),
                                         arms=["random", "skill", "on_policy"])
    other = dataclasses.replace(_committed_regime(tmp_path / "x", composed_data, leaves), name="X")
    _only_make_data(monkeypatch)
    report = tmp_path / "README.md"
    driver.main([with_on_policy, other], seeds=[0], only=["X"], update_readme_section=False,
                report_file=str(report), report_header="# two regimes")
    saved = json.loads((Path(with_on_policy.results_dir) / "results.json").read_text())
    assert saved["seeds"] == [0] and list(saved["arms"]) == ["random", "skill"]
    assert "### Regime P: fresh checkout" in report.read_text() and "### Regime X" in report.read_text()


def test_a_remade_student_that_does_not_reproduce_the_logged_profile_stops_the_regime(composed_data, tmp_path,
                                                                                      monkeypatch):
    """An arm still to train needs the warm-up student again; if the re-made one profiles differently from the
    log, the committed seeds came from another student, and the driver stops in one line instead of mixing them."""
    _, leaves = composed_data
    cfg = _committed_regime(tmp_path, composed_data, leaves)
    driver.committed_arm(cfg, 0, "skill")[0].unlink()  # the skill arm of seed 0 must train

    def make_student(cfg, prep):
        prep["student"] = "remade"
        return _profile(tmp_path / "remade.json", leaves, dict.fromkeys(leaves, 0.5))

    monkeypatch.setattr(driver, "make_student", make_student)
    monkeypatch.setattr(driver, "run", lambda *a, **k: None)
    monkeypatch.setattr(driver, "prepare_data", lambda cfg, attempt, work, timings: composed_data[0])
    with pytest.raises(ConfigError, match=r"re-made warm-up student's profile .* differs from the one logged in "
                                          r".*tries.json \(24 leaves differ"):
        driver.main([cfg], seeds=[0], update_readme_section=False, report_file=str(tmp_path / "R.md"))


def test_each_seed_keeps_one_student_and_a_seed_whose_student_is_not_remade_starts_again(composed_data, tmp_path,
                                                                                        monkeypatch):
    """``student_per_seed`` (round 3, config item 9): a seed without committed arms takes the student made here if
    its profile passes the pre-check, and its selections read that student's committed profile; a seed whose logged
    student is not re-made here has its committed arms moved aside and starts again; a student failing the pre-check
    runs no seed."""
    import json

    _, leaves = composed_data
    cfg = dataclasses.replace(_committed_regime(tmp_path, composed_data, leaves), student_per_seed=True)
    results = Path(cfg.results_dir)
    made = {"profile": None}

    def make_student(cfg, prep):
        prep["student"] = str(tmp_path / "student")
        (prep["profile_dir"]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(made["profile"], prep["profile_dir"] / "profile.json")
        return prep["profile_dir"] / "profile.json"

    monkeypatch.setattr(driver, "make_student", make_student)
    monkeypatch.setattr(driver, "prepare_data", lambda cfg, attempt, work, timings: composed_data[0])
    prep = driver.prepare_regime(cfg)
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "model.safetensors").write_bytes(b"weights")
    spread = {leaf: 0.25 + 0.4 * k / (len(leaves) - 1) for k, leaf in enumerate(leaves)}
    made["profile"] = _profile(tmp_path / "made.json", leaves, spread)

    assert driver.student_for_seed(cfg, prep, 1) == str(tmp_path / "student")
    log = json.loads((results / "students.json").read_text())
    logged, mine = log["students"]
    assert logged["name"] == "try1-logged" and logged["seeds"] == [0]  # seed 0's committed arms came from it
    assert mine["seeds"] == [1] and mine["precheck"]["passed"] and mine["export_sha256"]["model.safetensors"]
    assert json.loads((REPO / mine["profile_file"]).read_text())["nodes"] == json.loads(made["profile"].read_text())[
        "nodes"]
    assert driver.seed_profile_file(cfg, prep, 1) == REPO / mine["profile_file"]
    assert driver.seed_profile_file(cfg, prep, 0) == prep["profile_file"]
    driver.student_for_seed(cfg, prep, 1)  # the same student again: nothing changes
    assert json.loads((results / "students.json").read_text()) == log

    # seed 0's logged student is not what this machine makes: its committed arms are kept aside, it starts again
    driver.student_for_seed(cfg, prep, 0)
    aside = sorted(p.name for p in (results / "records" / "superseded" / "try1-logged").iterdir())
    assert aside == ["seed0_random.jsonl.gz", "seed0_random.trained.json", "seed0_skill.jsonl.gz"]
    assert not list((results / "records").glob("seed0_*"))
    log = json.loads((results / "students.json").read_text())
    assert [s["seeds"] for s in log["students"]] == [[], [0, 1]]

    # a student whose profile is concentrated runs no seed, and is logged with its failed check
    skewed = {leaf: (0.02 if k < 3 else 0.9) for k, leaf in enumerate(leaves)}
    made["profile"] = _profile(tmp_path / "skewed.json", leaves, skewed)
    prep["student"] = None
    with pytest.raises(ConfigError, match=r"seed 2: this machine's warm-up student \(try1-\w+\) fails the "
                                          r"pre-check \(effective leaves at T=1 [\d.]+ of 25"):
        driver.student_for_seed(cfg, prep, 2)
    log = json.loads((results / "students.json").read_text())
    assert log["students"][-1]["seeds"] == [] and not log["students"][-1]["precheck"]["passed"]


def test_an_arm_committed_with_leaf_shares_counts_them_in_the_report_inputs(composed_data, tmp_path):
    """An arm whose trained ids were not kept (regime P's closed loop, seeds 0-1) is reported from its committed
    per-leaf shares; the report averages shares over seeds only, so shares averaged over those seeds stay exact."""
    import json

    data, _ = composed_data
    cfg = driver.ExperimentConfig(name="P", arms=["random", "closed_loop"])
    heldout = [json.loads(line)["id"] for line in (data / "heldout.jsonl").read_text().splitlines()]
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"id": i, "correct": True}) + "\n" for i in heldout))
    prep = {"data": data}
    leaves = sorted({"->".join(c) for line in (data / "attribution.jsonl").read_text().splitlines()
                     for c in json.loads(line)["chains"] if json.loads(line)["id"] in set(heldout)})
    shares = {leaf: (2.0 if k == 0 else 1.0) / (len(leaves) + 1) for k, leaf in enumerate(leaves)}
    pool_ids = [json.loads(line)["id"] for line in (data / "pool.jsonl").read_text().splitlines()]
    prep["runs"] = {0: {"random": {"records": str(records), "trained_ids": pool_ids[:16], "distinct_examples": 16},
                        "closed_loop": {"records": str(records), "trained_ids": [], "distinct_examples": 19,
                                        "leaf_shares": shares}}}
    inputs = driver.round3_inputs(cfg, prep, [0])
    assert inputs["shares"][0]["closed_loop"] == [shares[leaf] for leaf in inputs["leaves"]]
    assert inputs["distinct"][0]["closed_loop"] == 19
    assert abs(sum(inputs["shares"][0]["random"]) - 1) < 1e-9


@pytest.mark.slow  # make-composed-data's process and select-report's chart
def test_on_policy_arms_of_a_seed_whose_student_is_not_made_here_wait_and_its_sft_arms_stay(composed_data, tmp_path,
                                                                                            monkeypatch):
    """The on-policy pass reaches a seed whose SFT arms came from a student this machine does not make: its
    on-policy arms do not run here, and its committed SFT arms are neither moved aside nor trained again."""
    _, leaves = composed_data
    cfg = dataclasses.replace(_committed_regime(tmp_path, composed_data, leaves), student_per_seed=True,
                              arms=["random", "skill", "on_policy"])
    records = Path(cfg.results_dir) / "records"

    def make_student(cfg, prep):
        prep["student"] = str(tmp_path / "student")
        prep["profile_dir"].mkdir(parents=True, exist_ok=True)
        return _profile(prep["profile_dir"] / "profile.json", leaves, dict.fromkeys(leaves, 0.5))

    monkeypatch.setattr(driver, "make_student", make_student)
    _only_make_data(monkeypatch)
    committed = sorted(p.name for p in records.iterdir())
    report = tmp_path / "R.md"
    driver.main([cfg], seeds=[0], update_readme_section=False, report_file=str(report), report_header="# r")
    assert sorted(p.name for p in records.iterdir()) == sorted({*committed, "seed0_skill.trained.json"})
    assert not (records / "superseded").exists()
    assert "| random | " in report.read_text() and "| on_policy |" not in report.read_text()


def test_the_advice_says_which_of_t1_t05_and_the_closed_loop_to_use_from_their_verdicts_against_random():
    def d(mean, lo, hi, verdict):
        return {"mean": mean, "ci_low": lo, "ci_high": hi, "verdict": verdict}

    none = {"skill": d(0.0, -0.016, 0.02, "not separable"), "skill_t05": d(0.002, -0.009, 0.013, "not separable"),
            "closed_loop": d(-0.003, -0.022, 0.013, "not separable"), "random_format": d(0, -0.01, 0.01, "worse")}
    said = er.which_selection(none)
    assert said.startswith("Choosing the selection, each against random: T=1 (`skill`) +0.0 [-1.6, +2.0] (not "
                           "separable), T=0.5 (`skill_t05`) +0.2 [-0.9, +1.3] (not separable), the closed loop")
    assert said.endswith("none is shown better than random, so these measurements give no reason to prefer one. ")
    wins = {**none, "skill_t05": d(0.03, 0.01, 0.05, "beats random"), "closed_loop": d(0.02, 0.001, 0.04,
                                                                                         "beats random")}
    assert er.which_selection(wins).endswith("use T=0.5, the largest gain of those that beat random. ")
    assert er.which_selection({"skill": none["skill"], "skill_format": none["skill"]}) == ""  # nothing to choose
