"""Closed-loop skill selection (docs/METHOD.md §3-4): robust leaf values, the degeneracy warning, and re-selection
of each epoch's data from an updated profile."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from skill_distill.io import DataError, read_json, write_json
from skill_distill.profile import _warn_if_degenerate
from skill_distill.selection import (SelectionConfig, load_manifest, profile_warning, read_profile_nodes,
                                     result_warning, select, write_manifest)
from skill_distill.skill_tree import SkillTree, parse_chain
from skill_distill.synthetic import synthetic_tree

REPO = Path(__file__).resolve().parents[1]
EVIDENCE_PROFILE = REPO / "results" / "evidence" / "profile.json"
QUICKSTART = REPO / "data" / "quickstart"
FRACTION_ADDITION = "Fractions and Percentages->fraction addition"
# sha256 of the quickstart's selection_manifest.json as main wrote it before closed-loop selection existed
# (configs/quickstart.yaml data section); closed-loop options at their defaults must not change a byte
QUICKSTART_MANIFEST_SHA256 = "e428b19b1c7bcadaf2535204fe325581afc0b00b52ff4eac1348e77620c8d6c2"


@pytest.fixture(scope="module")
def evidence_tree() -> SkillTree:
    return synthetic_tree()


def evidence_pool(tree: SkillTree, per_leaf: int = 200) -> tuple[list[str], dict]:
    """The CPU experiment's pool shape: ``per_leaf`` problems of one leaf chain each."""
    chains = {f"{'/'.join(leaf)}#{k}": [leaf] for leaf in tree.leaf_chains for k in range(per_leaf)}
    return list(chains), chains


# ---- robust estimates and the degeneracy warning ------------------------------------------------------------
def test_evidence_profile_has_judged_counts_and_shrunk_values(evidence_tree):
    profile = read_json(EVIDENCE_PROFILE)
    leaves = {n["chain"]: n for n in profile["nodes"] if n["is_leaf"]}
    assert len(leaves) == 14 and all(n["judged"] == 200 for n in leaves.values())
    assert leaves[FRACTION_ADDITION]["correct"] == 0
    results = read_json(REPO / "results" / "evidence" / "results.json")
    assert {k: n["accuracy"] for k, n in leaves.items()} == pytest.approx(results["profile_leaf_accuracy"])
    assert all("accuracy_shrunk" in n for n in profile["nodes"])


def test_the_experiments_profile_warns_naming_the_leaf_and_the_options(evidence_tree):
    ids, chains = evidence_pool(evidence_tree)
    config = SelectionConfig(budget=160, seed=0)
    accuracy, judged = read_profile_nodes(EVIDENCE_PROFILE, evidence_tree)
    result = select(config, ids, chains, evidence_tree, node_accuracy=accuracy, judged_by_node=judged)
    assert result.target[parse_chain(FRACTION_ADDITION)] > 0.25
    warning = result_warning(result, config)
    assert warning is not None and "\n" not in warning
    assert repr(FRACTION_ADDITION) in warning and "59%" in warning
    for option in ("profile_value: accuracy_shrunk", "w_max", "temperature below 1", "re-selection"):
        assert option in warning
    assert "sit at w_max" not in warning  # one leaf of 14 at the cap: the second condition does not hold
    # the profile stage's line (paper's w_max and T over the judged leaves) says the same
    leaves = {parse_chain(n["chain"]): n["accuracy"] for n in read_json(EVIDENCE_PROFILE)["nodes"] if n["is_leaf"]}
    assert profile_warning(leaves) == warning
    # a lower cap spreads the budget: no warning
    lower = SelectionConfig(budget=160, seed=0, w_max=50.0)
    result = select(lower, ids, chains, evidence_tree, node_accuracy=accuracy, judged_by_node=judged)
    assert result_warning(result, lower) is None


def one_more_leaf_at_zero(out: Path) -> tuple[Path, list[str]]:
    """The quickstart profile (7 of 14 leaves without a correct answer: exactly half, no warning) with one more
    leaf at zero, written to ``out``; returns the path and the zero leaves."""
    profile = read_json(QUICKSTART / "profile" / "profile.json")
    for node in profile["nodes"]:
        if node["chain"] == "Arithmetic->multi-digit addition":
            node.update(correct=0, accuracy=0.0)
    write_json(out, profile)
    return out, [n["chain"] for n in profile["nodes"] if n["is_leaf"] and n["correct"] == 0]


def test_more_than_half_of_the_leaves_at_the_cap_warns(tmp_path, capsys):
    quickstart = read_json(QUICKSTART / "profile" / "profile.json")
    assert sum(n["is_leaf"] and n["correct"] == 0 for n in quickstart["nodes"]) == 7
    assert _warn_if_degenerate(quickstart) is None  # 7 of 14 is not more than half; each takes < 25%
    path, at_zero = one_more_leaf_at_zero(tmp_path / "profile.json")
    warning = _warn_if_degenerate(read_json(path))
    assert "8 of 14 judged leaves sit at w_max ** T = 1000" in warning
    assert all(repr(c) in warning for c in at_zero) and "\n" not in warning
    assert f"warning: {warning}" in capsys.readouterr().err
    # T = 0 samples leaves uniformly: the cap is not a degeneracy there
    leaves = {parse_chain(n["chain"]): n["accuracy"] for n in read_json(path)["nodes"] if n["is_leaf"]}
    assert profile_warning(leaves, SelectionConfig(temperature=0.0)) is None


def test_profile_value_accuracy_shrunk_reads_the_shrunk_values_and_is_in_the_manifest(evidence_tree, tmp_path):
    raw, judged = read_profile_nodes(EVIDENCE_PROFILE, evidence_tree)
    shrunk, judged_too = read_profile_nodes(EVIDENCE_PROFILE, evidence_tree, "accuracy_shrunk")
    assert judged == judged_too
    leaf = parse_chain(FRACTION_ADDITION)
    assert raw[leaf] == 0.0 and 0.0 < shrunk[leaf] < 0.01
    ids, chains = evidence_pool(evidence_tree)
    paper, robust = SelectionConfig(budget=160), SelectionConfig(budget=160, profile_value="accuracy_shrunk")
    a = select(paper, ids, chains, evidence_tree, node_accuracy=raw, judged_by_node=judged)
    b = select(robust, ids, chains, evidence_tree, node_accuracy=shrunk, judged_by_node=judged)
    assert b.target[leaf] < a.target[leaf]
    # with shrinkage toward a weak parent the leaf still has no correct answer and dominates: still a warning
    assert repr(FRACTION_ADDITION) in result_warning(b, robust, raw)
    write_manifest(tmp_path / "paper.json", a, paper, {})
    write_manifest(tmp_path / "robust.json", b, robust, {})
    assert "profile_value" not in read_json(tmp_path / "paper.json")["config"]  # the paper's bytes
    assert read_json(tmp_path / "robust.json")["config"]["profile_value"] == "accuracy_shrunk"
    with pytest.raises(DataError, match="profile_value"):
        load_manifest(tmp_path / "paper.json", {}, robust)
    assert load_manifest(tmp_path / "paper.json", {}, paper) == a.ids


def test_accuracy_shrunk_without_shrinkage_is_one_line():
    tree = SkillTree.load(QUICKSTART / "tree.json")
    with pytest.raises(DataError) as err:
        read_profile_nodes(QUICKSTART / "profile" / "profile.json", tree, "accuracy_shrunk")
    message = str(err.value)
    assert "\n" not in message and "accuracy_shrunk" in message and "shrinkage > 0" in message


def test_select_report_stage_prints_and_reports_the_warning(tmp_path, capsys):
    from skill_distill.selection_report import run_selection_report

    profile, _ = one_more_leaf_at_zero(tmp_path / "profile.json")
    summary = run_selection_report(str(QUICKSTART / "pool.jsonl"), str(QUICKSTART / "tree.json"),
                                   str(QUICKSTART / "attribution.jsonl"), str(profile), str(tmp_path / "report"),
                                   SelectionConfig(budget=96))
    assert "8 of 14 judged leaves sit at w_max ** T" in summary["warning"]
    assert f"warning: {summary['warning']}" in capsys.readouterr().err
    assert summary["warning"] in (tmp_path / "report" / "selection_report.md").read_text()


def quickstart_datamodule(run_dir: Path, **overrides):
    from datamodules.skill_datamodule import SkillDataModule
    from skill_distill.formatting import SkillFormat

    kwargs = dict(corpus=str(QUICKSTART / "pool.jsonl"), tokenizer="asset:smollm2-135m-instruct",
                  tree=str(QUICKSTART / "tree.json"), attribution=str(QUICKSTART / "attribution.jsonl"),
                  profile=str(QUICKSTART / "profile" / "profile.json"),
                  selection=SelectionConfig(strategy="skill", budget=96, seed=42),
                  skill_format=SkillFormat(mode="full"), max_length=384, run_dir=str(run_dir))
    kwargs.update(overrides)
    return SkillDataModule(**kwargs)


def test_quickstart_manifest_keeps_its_bytes(tmp_path, caplog):
    dm = quickstart_datamodule(tmp_path)
    with caplog.at_level("WARNING", logger="datamodules.skill_datamodule"):
        dm.setup("fit")
    digest = hashlib.sha256((tmp_path / "selection_manifest.json").read_bytes()).hexdigest()
    assert digest == QUICKSTART_MANIFEST_SHA256
    assert len(dm.train_examples) == 96
    assert not any("degenerate" in r.getMessage() for r in caplog.records)


def test_fit_warns_before_training(tmp_path, caplog):
    profile, _ = one_more_leaf_at_zero(tmp_path / "profile.json")
    dm = quickstart_datamodule(tmp_path / "run", profile=str(profile))
    with caplog.at_level("WARNING", logger="datamodules.skill_datamodule"):
        dm.setup("fit")
    assert [r.getMessage() for r in caplog.records if "degenerate skill weights" in r.getMessage()]
