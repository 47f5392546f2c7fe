"""Rebuild ``results/evidence/profile.json`` (the CPU experiment's student profile, with judged counts) from
``results/evidence/results.json``.

    python experiments/evidence_profile.py

The experiment driver now commits its profile itself; the run behind the committed results predates that, and
rerunning its data, warm-up and profile steps takes longer than this machine allows. The rebuild is exact for what
selection reads: every pool problem of the experiment has one leaf chain, each leaf has ``pool_per_leaf`` judged
problems (the warm-up problems are taken out before profiling), and ``results.json`` holds each leaf's accuracy,
a multiple of ``1 / pool_per_leaf``; internal nodes are the sums of their leaves (``SkillCounts``, as the profile
stage computes them). Problems are named ``<leaf>#<k>``; their order within a leaf is not recoverable and
nothing reads it.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from skill_distill.io import DataError, read_json, write_json  # noqa: E402 - after the sys.path.insert above
from skill_distill.skill_stats import SkillCounts  # noqa: E402 - after the sys.path.insert above
from skill_distill.skill_tree import format_chain, parse_chain  # noqa: E402 - after the sys.path.insert above
from skill_distill.synthetic import synthetic_tree  # noqa: E402 - after the sys.path.insert above


def rebuild(results_path: Path, shrinkage: float = 20.0) -> dict:
    """The profile object; ``shrinkage`` pseudo-counts give ``accuracy_shrunk`` (docs/METHOD.md §3)."""
    results = read_json(results_path, "experiment results")
    per_leaf = int(results["config"]["pool_per_leaf"])
    tree = synthetic_tree()
    counts = SkillCounts()
    for name, accuracy in results["profile_leaf_accuracy"].items():
        chain = parse_chain(name)
        correct = accuracy * per_leaf
        if abs(correct - round(correct)) > 1e-6:
            raise DataError(f"{results_path}: {name} accuracy {accuracy} is not a multiple of 1/{per_leaf}")
        for k in range(per_leaf):
            counts.add(f"{format_chain(chain)}#{k}", [chain], [k < round(correct)])
    return {"rebuilt_from": "results/evidence/results.json", "student": "warm-up SmolLM2-135M-Instruct",
            "sampling": {"temperature": 0.0, "max_new_tokens": results["config"]["max_new_tokens"], "n": 1},
            "tree_name": tree.name, "examples": counts.judged(()), "overall_accuracy": counts.accuracy(()),
            "shrinkage": shrinkage, "confidence": 0.95, "interval": "wilson",
            "nodes": counts.rows(tree, shrinkage=shrinkage)}


if __name__ == "__main__":
    out = REPO / "results" / "evidence" / "profile.json"
    write_json(out, rebuild(REPO / "results" / "evidence" / "results.json"))
    print(f"wrote {out}")
