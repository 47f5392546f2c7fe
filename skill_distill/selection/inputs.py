"""Reading what a selection needs from the pipeline's files (pool, tree, attribution, profile, verdicts)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from skill_distill.io import DataError, read_jsonl
from skill_distill.profile_file import read_profile_nodes
from skill_distill.selection.config import ProfileValue, SelectionConfig
from skill_distill.selection.manifest import fingerprint_file
from skill_distill.selection.result import SelectionResult
from skill_distill.selection.strategies import select
from skill_distill.skill_tree import Chain, SkillTree


@dataclass
class SelectionInputs:
    """Everything ``select`` needs, read from the pipeline's files, plus the files' fingerprints."""

    ids: list[str]
    chains_by_id: dict[str, list[Chain]]
    tree: SkillTree
    node_accuracy: dict[Chain, float] | None = None
    judged_by_node: dict[Chain, int] | None = None
    correct_by_id: dict[str, float] | None = None
    pass_rate_by_id: dict[str, float | None] | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    raw_accuracy: dict[Chain, float] | None = None
    """The profile's raw accuracies when ``node_accuracy`` holds another value (for ``result_warning``)."""

    def select(self, config: SelectionConfig) -> SelectionResult:
        return select(config, self.ids, self.chains_by_id, self.tree, node_accuracy=self.node_accuracy,
                      correct_by_id=self.correct_by_id, pass_rate_by_id=self.pass_rate_by_id,
                      judged_by_node=self.judged_by_node, source=self.source)


def load_selection_inputs(pool: str, tree: str, attribution: str, profile: str | None = None,
                          verdicts: str | None = None, display_names: str | None = None,
                          profile_value: ProfileValue = "accuracy") -> SelectionInputs:
    """Read the canonical pool JSONL, the tree, the attribution JSONL ({"id", "chains"}), optionally profile.json
    (``profile_value`` and judged counts of every node) and the profile's verdicts.jsonl (mean correctness per id).

    Raises DataError naming the file and row of a malformed input or a chain outside the tree.
    """
    from skill_distill.corpus import load_corpus
    from skill_distill.skill_stats import load_attribution

    skill_tree = SkillTree.load(tree, display_names)
    examples = load_corpus(pool, require_trace=False)
    inputs = SelectionInputs(
        ids=[e.id for e in examples], chains_by_id=load_attribution(attribution, skill_tree), tree=skill_tree,
        pass_rate_by_id={e.id: e.pass_rate for e in examples}, source=str(attribution),
        fingerprints={"corpus": fingerprint_file(pool), "tree": fingerprint_file(tree),
                      "attribution": fingerprint_file(attribution)})
    if profile is not None:
        inputs.node_accuracy, inputs.judged_by_node = read_profile_nodes(profile, skill_tree, profile_value)
        if profile_value != "accuracy":
            inputs.raw_accuracy, _ = read_profile_nodes(profile, skill_tree)
        inputs.fingerprints["profile"] = fingerprint_file(profile)
    if verdicts is not None:
        inputs.correct_by_id = read_mean_correctness(verdicts)
        inputs.fingerprints["verdicts"] = fingerprint_file(verdicts)
    return inputs


def read_mean_correctness(path: str | os.PathLike) -> dict[str, float]:
    """verdicts.jsonl rows ``{"id", "sample", "correct", ...}`` -> the mean correctness of each id."""
    totals: dict[str, list[float]] = {}
    for line, row in enumerate(read_jsonl(path, "verdicts file", allow_torn_tail=True), start=1):
        if "id" not in row or "correct" not in row:
            raise DataError(f"{path}:{line}: a verdict row needs 'id' and 'correct'")
        totals.setdefault(str(row["id"]), []).append(float(bool(row["correct"])))
    return {k: sum(v) / len(v) for k, v in totals.items()}
