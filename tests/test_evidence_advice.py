"""The evidence report's cost line, and its closing advice ("what to do with a weak student"), which follows the
measured pooled differences: it recommends an arm only when its interval lies above zero, and advises raising the
profile first only when the concentrated regime (round 2's regime A, the informative profile) shows a skill arm
beating random."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
import skill_selection_cpu as driver  # noqa: E402 - importable only after the sys.path.insert above


def regime(title: str, in_band: int, at_zero: list[str], **diffs: tuple[float, float, float]) -> dict:
    """A regime's results.json as the driver writes it, with 14 leaves and two seeds; ``diffs``: arm -> pooled
    (difference, interval low, high) against random. Per seed, ``skill`` gives the first 4 leaves a larger share
    than random and gains 0.10 on them; it loses 0.05 on the other 10."""
    leaves = 14
    seed = {"selection_share": {"random": [1 / leaves] * leaves, "skill": [0.2] * 4 + [0.02] * 10},
            "arms": {"random": {"per_leaf": [0.3] * leaves}, "skill": {"per_leaf": [0.4] * 4 + [0.25] * 10}}}
    return {"title": title, "precheck": {"leaves_in_band": in_band, "leaves_at_zero": at_zero},
            "leaves": [f"leaf {i}" for i in range(leaves)], "seeds": {"0": seed, "1": seed},
            "config": {"shrinkage": 20},
            "pooled_minus_random": {arm: {"accuracy": a, "ci_low": lo, "ci_high": hi}
                                    for arm, (a, lo, hi) in diffs.items()}}


WEAK = regime("the degenerate regime", 5, ["fraction addition"], skill=(-0.045, -0.077, -0.012),
              skill_format=(-0.030, -0.061, 0.002), skill_shrunk=(-0.038, -0.070, -0.005))


def test_no_arm_beats_random_in_either_regime_advises_random_and_says_a_stronger_profile_did_not_pay():
    strong = regime("round 2's regime A", 11, [], skill=(-0.046, -0.091, -0.004), closed_loop=(-0.023, -0.062, 0.014))
    lines = driver.weak_student_advice({"concentrated": strong, "B": WEAK})
    assert lines[0].startswith("- Regime concentrated, round 2's regime A: 11 of 14 leaves in the profile band, 0 "
                               "at zero.")
    assert "No arm beat random. Worse than random: skill. Not separable from random: closed_loop. " in lines[0]
    assert lines[0].endswith("Where `skill` gave a leaf a larger share than random (4 of 14 leaves) its held-out "
                             "accuracy changed by +10.0 points against random; on the 10 leaves it gave a smaller "
                             "share, by -5.0.")
    assert "Worse than random: skill_shrunk, skill. Not separable from random: skill_format." in lines[1]
    assert ("the closest was `skill_format` (-3.0 [-6.1, +0.2]). Keep random selection: in regime concentrated"
            in lines[2])
    assert "no skill arm beat random either" in lines[2] and "raise the student's profile" not in lines[2]
    assert lines[3].startswith("- With the weak student, shrinking leaf accuracies toward the parent")
    assert lines[3].endswith("20 pseudo-counts) moved the pooled difference by +0.7 points against the paper-exact "
                             "skill arm.")


def test_raising_the_profile_is_advised_only_with_regime_a_showing_an_arm_above_random():
    strong = regime("round 2's regime A", 11, [], skill=(0.031, 0.004, 0.060), closed_loop=(0.052, 0.020, 0.083))
    lines = driver.weak_student_advice({"concentrated": strong, "B": WEAK})
    assert "Better than random: closed_loop, skill." in lines[0]
    assert lines[2].endswith("or first raise the student's profile (in regime concentrated, where most leaves are in "
                             "the band, `closed_loop` beat random by +5.2 [+2.0, +8.3]).")
    assert driver.weak_student_advice({"B": WEAK})[1].endswith("Keep random selection.")  # no concentrated: no claim


def test_an_arm_above_random_with_the_weak_student_is_named():
    weak = regime("the degenerate regime", 5, [], skill=(-0.01, -0.04, 0.02), skill_shrunk=(0.03, 0.01, 0.05))
    lines = driver.weak_student_advice({"B": weak})
    assert lines[1] == ("- With a weak student (most leaves near zero), use `skill_shrunk`: it was the only arm whose "
                        "pooled interval against random lies above zero.")


def test_cost_line_names_each_finished_seed(tmp_path):
    timings = tmp_path / "timings.json"
    timings.write_text('{"shared:warm-up": 1800, "shared:profile": 540, "seed0:train random": 2400, '
                       '"seed0:evaluate random": 840, "seed1:train random": 2640}')
    assert driver.cost_line(timings, [0, 1, 2]) == (
        "Cost on this 2-core CPU (shared with other work, so an upper bound): shared steps 39 min; one seed (all "
        "arms, train + evaluate): seed 0 54 min, seed 1 44 min.")
    assert driver.cost_line(tmp_path / "missing.json", [0]) == "Cost: shared steps 0 min."
    # round 3's keys: a section counts its own arms, and the on-policy teacher only where an on-policy arm is
    timings.write_text('{"shared:warm-up": 600, "shared:teacher:train": 3000, "seed2:random:train": 600, '
                       '"seed2:random:evaluate": 300, "seed2:on_policy:train": 1800, "seed2:on_policy:evaluate": 300}')
    assert driver.cost_line(timings, [2], ["random", "skill"]).endswith(
        "shared steps 10 min; one seed (all arms, train + evaluate): seed 2 15 min.")
    assert driver.cost_line(timings, [2], ["random", "on_policy"]).endswith(
        "shared steps 60 min; one seed (all arms, train + evaluate): seed 2 50 min.")
    # a seed whose SFT arms ran on earlier machines has one total for them (the committed timings of round 3's
    # seeds 0-1): it counts beside SFT arms, not in a section of on-policy arms alone
    timings.write_text('{"shared:warm-up": 600, "seed0:all arms, the report of commit 25fbac2": 13740, '
                       '"seed2:random:train": 600, "seed2:on_policy:train": 1800}')
    assert driver.cost_line(timings, [0, 2], ["random", "skill"]).endswith(
        "one seed (all arms, train + evaluate): seed 0 229 min, seed 2 10 min.")
    assert driver.cost_line(timings, [0, 2], ["on_policy"]).endswith(
        "one seed (all arms, train + evaluate): seed 2 30 min.")
