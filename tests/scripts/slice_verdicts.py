"""The profiling slice's verdict files that stand in for the re-profile's generation in the closed-loop runs
(tests/test_closed_loop.py, tests/test_pending_evaluation.py; read by closed_loop_run.py --verdicts_dir)."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "data" / "quickstart"


def write_slice_verdicts(out: Path) -> list[str]:
    """Verdict files of the profiling slice the run carves (2 per leaf, seed 0): after epoch 0 the student gets
    the Fractions problems right and the rest wrong, after epoch 1 the Arithmetic problems. Returns the slice ids."""
    from skill_distill.corpus import load_corpus
    from skill_distill.reselection import carve_slice
    from skill_distill.skill_stats import load_attribution
    from skill_distill.skill_tree import SkillTree

    tree = SkillTree.load(QUICKSTART / "tree.json")
    chains = load_attribution(QUICKSTART / "attribution.jsonl", tree)
    pool = load_corpus(str(QUICKSTART / "pool.jsonl"), require_trace=False)
    taken, _ = carve_slice(pool, chains, tree, per_leaf=2, seed=0, exclude=set())
    out.mkdir(parents=True)
    for epoch, good in ((0, "Fractions and Percentages"), (1, "Arithmetic")):
        with (out / f"epoch={epoch}.jsonl").open("w") as f:
            for e in taken:
                f.write(json.dumps({"id": e.id, "sample": 0, "correct": chains[e.id][0][0] == good}) + "\n")
    return [e.id for e in taken]
