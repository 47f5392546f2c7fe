"""Skill-based selection (docs/METHOD.md §4): weights, the sampler's distribution, variants, manifest and report."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from scipy.sparse import csr_matrix

from benchmarks.reference_impl import forced_distribution_naive, sample_by_skill_literal
from skill_distill.io import ConfigError, DataError, write_json, write_jsonl
from skill_distill.selection import (
    SelectionConfig,
    fingerprint_file,
    leaf_weight,
    load_manifest,
    read_mean_correctness,
    read_profile_nodes,
    select,
    write_manifest,
)
from skill_distill.selection.forced import _forced_distribution
from skill_distill.skill_tree import SkillTree, format_chain

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tree(shared_dir) -> SkillTree:
    return SkillTree.load(shared_dir / "skill_trees" / "skill_mix.json")


def make_pool(tree: SkillTree, n: int, seed: int = 0, max_leaves: int = 3):
    """A synthetic attributed pool: each example has 1..max_leaves leaves, skewed leaf popularity."""
    rng = np.random.default_rng(seed)
    leaves = tree.leaf_chains
    popularity = 1.0 / np.arange(1, len(leaves) + 1)
    popularity /= popularity.sum()
    ids = [f"ex{i:05d}" for i in range(n)]
    chains = {}
    for ex in ids:
        k = int(rng.integers(1, max_leaves + 1))
        chains[ex] = [leaves[j] for j in dict.fromkeys(rng.choice(len(leaves), size=k, p=popularity))]
    accuracy = {c: float(rng.uniform(0.05, 0.95)) for c in tree.all_chains()}
    return ids, chains, accuracy


# ---- weights -------------------------------------------------------------------------------------------------
def test_leaf_weight_formula_edge_cases():
    assert leaf_weight(0.5) == 2.0
    assert leaf_weight(0.25, temperature=2.0) == 16.0
    assert leaf_weight(0.25, temperature=0.5) == 2.0
    assert leaf_weight(0.0) == 1000.0  # accuracy 0 -> w_max ** T
    assert leaf_weight(0.0, w_max=10.0, temperature=2.0) == 100.0
    assert leaf_weight(1e-5, w_max=1000.0) == 1000.0  # 1/acc = 1e5 capped
    assert leaf_weight(0.01, w_max=50.0, temperature=3.0) == 50.0 ** 3
    assert leaf_weight(1.0) == 1.0
    assert leaf_weight(0.3, temperature=0.0) == 1.0


def test_select_uses_exact_weights_and_target(tree):
    a, b, c = tree.leaf_chains[:3]
    ids = ["x", "y", "z"]
    chains = {"x": [a], "y": [b], "z": [c]}
    config = SelectionConfig(budget=3, w_max=8.0, temperature=2.0)
    result = select(config, ids, chains, tree, node_accuracy={a: 0.0, b: 0.5, c: 0.01})
    assert result.leaf_weights == {a: 64.0, b: 4.0, c: 64.0}
    assert result.target == pytest.approx({a: 64 / 132, b: 4 / 132, c: 64 / 132})
    assert sorted(result.ids) == ids


# ---- the sampler -----------------------------------------------------------------------------------------------
def test_same_seed_same_selection_other_seed_differs(tree):
    ids, chains, accuracy = make_pool(tree, 3000)
    first = select(SelectionConfig(budget=200), ids, chains, tree, node_accuracy=accuracy)
    again = select(SelectionConfig(budget=200), ids, chains, tree, node_accuracy=accuracy)
    other = select(SelectionConfig(budget=200, seed=7), ids, chains, tree, node_accuracy=accuracy)
    assert first.ids == again.ids and first.drawn_leaf == again.drawn_leaf
    assert len(first.ids) == len(set(first.ids)) == 200
    assert first.ids != other.ids
    for ex in first.ids:  # every example is drawn through one of its own leaves
        assert first.drawn_leaf[ex] in chains[ex]


def test_drawn_leaf_frequencies_match_normalised_weights(tree):
    # a large pool (1,500 single-leaf examples per leaf) so that depleting a leaf does not bend the frequencies
    per_leaf = 1500
    ids, chains = [], {}
    for j, leaf in enumerate(tree.leaf_chains):
        for k in range(per_leaf):
            ids.append(f"{j}-{k}")
            chains[ids[-1]] = [leaf]
    rng = np.random.default_rng(3)
    accuracy = {leaf: float(rng.uniform(0.3, 1.0)) for leaf in tree.leaf_chains}
    budget = 3000
    result = select(SelectionConfig(budget=budget, seed=11), ids, chains, tree, node_accuracy=accuracy)
    counts = Counter(result.drawn_leaf.values())
    observed = np.array([counts.get(leaf, 0) for leaf in tree.leaf_chains])
    expected = np.array([result.target[leaf] for leaf in tree.leaf_chains]) * budget
    assert observed.sum() == budget
    assert stats.chisquare(observed, expected).pvalue > 0.001
    # and the target is the normalised weights 1/acc
    inverse = np.array([1 / accuracy[leaf] for leaf in tree.leaf_chains])
    assert expected / budget == pytest.approx(inverse / inverse.sum())


def _tiny_case(tree):
    """Two leaves: A (accuracy 1 -> w 1) with e0, e1; B (accuracy 1/3 -> w 3) with e1, e2, e3; budget 2.
    One round draws (example, leaf) with probability w(l) / (W n(l)): A-pairs 1/8, B-pairs 1/4 each."""
    A, B = tree.leaf_chains[0], tree.leaf_chains[1]
    chains = {"e0": [A], "e1": [A, B], "e2": [B], "e3": [B]}
    pair_mass = {("e0", A): 0.5, ("e1", A): 0.5, ("e1", B): 1.0, ("e2", B): 1.0, ("e3", B): 1.0}
    # exact law of (first pick, its leaf, second pick, its leaf) for the repeat-until-new loop
    law = {}
    for (e1, l1), m1 in pair_mass.items():
        q1 = sum(m for (e, _), m in pair_mass.items() if e == e1)
        for (e2, l2), m2 in pair_mass.items():
            if e2 != e1:
                law[(e1, l1, e2, l2)] = m1 / 4.0 * m2 / (4.0 - q1)
    return A, B, chains, law


@pytest.mark.slow
def test_fast_sampler_has_the_literal_loops_distribution(tree):
    A, B, chains, law = _tiny_case(tree)
    outcomes = sorted(law)
    runs = 3000
    fast, literal = Counter(), Counter()
    names = {0: "e0", 1: "e1", 2: "e2", 3: "e3"}
    for seed in range(runs):
        r = select(SelectionConfig(budget=2, seed=seed), list(chains), chains, tree,
                   node_accuracy={A: 1.0, B: 1 / 3})
        fast[(r.ids[0], r.drawn_leaf[r.ids[0]], r.ids[1], r.drawn_leaf[r.ids[1]])] += 1
        picks = sample_by_skill_literal({0: [0, 1], 1: [1, 2, 3]}, {0: 1.0, 1: 3.0}, 2, np.random.default_rng(seed))
        (x, lx), (y, ly) = picks
        literal[(names[x], (A, B)[lx], names[y], (A, B)[ly])] += 1
    expected = np.array([law[o] for o in outcomes]) * runs
    assert sum(law.values()) == pytest.approx(1.0)
    for counts in (fast, literal):
        assert set(counts) <= set(law)
        assert stats.chisquare(np.array([counts[o] for o in outcomes]), expected).pvalue > 0.001


def test_budget_larger_than_pool_takes_everything_eligible(tree):
    ids, chains, accuracy = make_pool(tree, 40)
    chains["ex00000"] = []  # an example without chains is never drawn by skill
    result = select(SelectionConfig(budget=100), ids, chains, tree, node_accuracy=accuracy)
    assert sorted(result.ids) == sorted(set(ids) - {"ex00000"})
    assert any("39 eligible examples for a budget of 100" in n for n in result.notes)
    assert any("1 pool examples have no skill chain" in n for n in result.notes)
    rand = select(SelectionConfig(strategy="random", budget=100), ids, chains, tree)
    assert sorted(rand.ids) == sorted(ids) and rand.drawn_leaf["ex00000"] is None


def test_leaves_without_judged_examples_are_never_drawn(tree):
    ids, chains, accuracy = make_pool(tree, 2000, seed=1)
    unjudged = set(tree.leaf_chains[::2])
    profile = {c: a for c, a in accuracy.items() if c not in unjudged}
    result = select(SelectionConfig(budget=500), ids, chains, tree, node_accuracy=profile)
    assert len(result.ids) == 500
    assert not unjudged & set(result.drawn_leaf.values())
    assert not unjudged & set(result.target) and not unjudged & set(result.leaf_weights)
    only_unjudged = {ex for ex, cs in chains.items() if set(cs) <= unjudged}
    assert only_unjudged and not only_unjudged & set(result.ids)
    assert any(f"{len(unjudged)} of 118 leaves have no judged example" in n for n in result.notes)
    # a judged count of 0 also means "not judged"
    judged = {c: (0 if c == tree.leaf_chains[1] else 5) for c in tree.all_chains()}
    r2 = select(SelectionConfig(budget=500), ids, chains, tree, node_accuracy=accuracy, judged_by_node=judged)
    assert tree.leaf_chains[1] not in r2.target and tree.leaf_chains[1] not in r2.drawn_leaf.values()


# ---- variants ----------------------------------------------------------------------------------------------
def test_correctness_filter_and_wrong_share(tree):
    ids, chains, accuracy = make_pool(tree, 1000, seed=2)
    correct = {ex: float(i % 4 == 0) for i, ex in enumerate(ids)}  # a quarter right
    for strategy in ("skill", "random"):
        wrong = select(SelectionConfig(strategy=strategy, budget=300, correctness="wrong"), ids, chains, tree,
                       node_accuracy=accuracy, correct_by_id=correct)
        assert len(wrong.ids) == 300 and all(correct[ex] == 0.0 for ex in wrong.ids)
        right = select(SelectionConfig(strategy=strategy, budget=100, correctness="right"), ids, chains, tree,
                       node_accuracy=accuracy, correct_by_id=correct)
        assert len(right.ids) == 100 and all(correct[ex] == 1.0 for ex in right.ids)
        share = select(SelectionConfig(strategy=strategy, budget=200, wrong_share=0.3), ids, chains, tree,
                       node_accuracy=accuracy, correct_by_id=correct)
        assert len(set(share.ids)) == 200 and sum(correct[ex] == 0.0 for ex in share.ids) == 60
    # 250 right examples exist: a 0.2 share of 1000 wants 800 right, so wrong ones fill the budget
    short = select(SelectionConfig(budget=1000, wrong_share=0.2), ids, chains, tree, node_accuracy=accuracy,
                   correct_by_id=correct)
    assert len(short.ids) == 1000 and sum(correct[ex] == 1.0 for ex in short.ids) == 250
    assert any("only 250 are eligible" in n for n in short.notes)
    with pytest.raises(DataError, match="needs the student's verdicts"):
        select(SelectionConfig(correctness="wrong"), ids, chains, tree, node_accuracy=accuracy)
    with pytest.raises(ConfigError, match="set either wrong_share or correctness"):
        select(SelectionConfig(correctness="wrong", wrong_share=0.5), ids, chains, tree, node_accuracy=accuracy)


def test_difficulty_band_is_inclusive(tree):
    ids = [f"p{i}" for i in range(8)]
    rates = dict(zip(ids, [0.0, 0.24, 0.25, 0.4, 0.625, 0.63, 1.0, None], strict=True))
    result = select(SelectionConfig(strategy="difficulty", budget=10), ids, {}, tree, pass_rate_by_id=rates)
    assert sorted(result.ids) == ["p2", "p3", "p4"]
    narrow = select(SelectionConfig(strategy="difficulty", budget=2, difficulty_band=(0.25, 0.625), seed=1),
                    ids, {}, tree, pass_rate_by_id=rates)
    assert len(narrow.ids) == 2 and set(narrow.ids) <= {"p2", "p3", "p4"}
    with pytest.raises(DataError, match="pass_rate"):
        select(SelectionConfig(strategy="difficulty"), ids, {}, tree, pass_rate_by_id={i: None for i in ids})


def test_max_depth_cuts_chains_and_uses_cut_node_accuracy(tree):
    ids, chains, accuracy = make_pool(tree, 2000, seed=4)
    topics = [(t,) for t in tree.topics()]
    profile = {t: 0.1 * (k + 1) for k, t in enumerate(topics)}
    del profile[topics[-1]]  # a cut node without accuracy is never drawn
    result = select(SelectionConfig(budget=300, max_depth=1), ids, chains, tree, node_accuracy=profile)
    assert result.leaves == topics
    assert set(result.drawn_leaf.values()) <= set(topics[:-1])
    assert result.leaf_weights == pytest.approx({t: 1 / a for t, a in profile.items()})
    for ex in result.ids:
        assert result.drawn_leaf[ex] in {c[:1] for c in chains[ex]}
    assert any("a cut node needs its own accuracy" in n for n in result.notes)


def test_only_skill_selects_that_skill_and_names_close_matches(tree):
    ids, chains, accuracy = make_pool(tree, 3000, seed=5)
    leaf = tree.leaf_chains[20]
    result = select(SelectionConfig(budget=50, only_skill=format_chain(leaf)), ids, chains, tree,
                    node_accuracy=accuracy)
    having = {ex for ex, cs in chains.items() if leaf in cs}
    assert set(result.ids) <= having and len(result.ids) == min(50, len(having))
    assert set(result.drawn_leaf.values()) == {leaf} and result.target == {leaf: 1.0}
    topic = select(SelectionConfig(strategy="random", budget=100, only_skill="Probability"), ids, chains, tree)
    assert all(any(c[0] == "Probability" for c in chains[ex]) for ex in topic.ids)
    with pytest.raises(DataError, match="close matches: 'Probability->counting principles'"):
        select(SelectionConfig(only_skill="Probability->counting principle"), ids, chains, tree, node_accuracy=accuracy)
    with pytest.raises(DataError, match="'Probability->counting principles'"):
        select(SelectionConfig(only_skill="counting principles"), ids, chains, tree, node_accuracy=accuracy)


def test_user_errors_are_one_line_data_errors(tree):
    ids, chains, accuracy = make_pool(tree, 10)
    with pytest.raises(DataError, match="needs a student profile"):
        select(SelectionConfig(), ids, chains, tree)
    bad = dict(chains, ex00003=[("Probability", "card tricks")])
    with pytest.raises(DataError, match=r"attribution.jsonl: example 'ex00003': unknown skill 'card tricks'") as e:
        select(SelectionConfig(), ids, bad, tree, node_accuracy=accuracy, source="attribution.jsonl")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="needs a skill tree and an attribution"):
        select(SelectionConfig(), ids, None, None, node_accuracy=accuracy)
    # the baselines need neither a tree nor chains, and give the same ids as with them
    bare = select(SelectionConfig(strategy="random", budget=4), ids, None, None)
    assert bare.ids == select(SelectionConfig(strategy="random", budget=4), ids, chains, tree).ids
    assert set(bare.drawn_leaf.values()) == {None}
    with pytest.raises(ConfigError, match=r"selection.budget=0: must be at least 1"):
        select(SelectionConfig(budget=0), ids, chains, tree, node_accuracy=accuracy)
    with pytest.raises(ConfigError, match="forced_distribution"):
        select(SelectionConfig(strategy="random", forced_distribution=True), ids, chains, tree)


# ---- forced distribution -------------------------------------------------------------------------------------
def test_forced_distribution_vectorised_equals_naive():
    rng = np.random.default_rng(0)
    for trial in range(6):
        rows, leaves = int(rng.integers(30, 90)), int(rng.integers(3, 12))
        dense = np.zeros((rows, leaves))
        for r in range(rows):
            if trial == 0 or rng.random() > 0.1:  # some rows without a leaf
                dense[r, rng.choice(leaves, size=int(rng.integers(1, 4)), replace=False) if leaves >= 3 else 0] = 1
        X = csr_matrix(dense)
        target = rng.random(leaves) ** 3
        target /= target.sum()
        start = rng.integers(0, 3, size=leaves).astype(float) * (trial % 2)  # a histogram carried over
        priority = rng.permutation(rows)
        quota = int(rng.integers(5, rows + 5))  # sometimes more than the candidates
        fast_counts, naive_counts = start.copy(), start.copy()
        fast = _forced_distribution(X, target, fast_counts, quota, priority)
        naive = forced_distribution_naive(X, target, naive_counts, quota, priority)
        assert fast == naive and len(fast) == min(quota, int((dense.sum(1) > 0).sum()))
        assert np.array_equal(fast_counts, naive_counts)
        assert np.array_equal(fast_counts - start, dense[fast].sum(0))


def test_forced_distribution_tracks_the_target_closer_than_sampling(tree):
    ids, chains, accuracy = make_pool(tree, 5000, seed=6)
    sampled = select(SelectionConfig(budget=300), ids, chains, tree, node_accuracy=accuracy)
    forced = select(SelectionConfig(budget=300, forced_distribution=True), ids, chains, tree, node_accuracy=accuracy)
    again = select(SelectionConfig(budget=300, forced_distribution=True), ids, chains, tree, node_accuracy=accuracy)
    assert forced.ids == again.ids and len(set(forced.ids)) == 300
    assert forced.target == sampled.target
    assert forced.divergence(all_chains=True)["tv"] < 0.5 * sampled.divergence(all_chains=True)["tv"]
    assert all(forced.drawn_leaf[ex] in chains[ex] for ex in forced.ids)


# ---- manifest ----------------------------------------------------------------------------------------------
def test_manifest_round_trip_and_changed_input(tree, tmp_path):
    ids, chains, accuracy = make_pool(tree, 500)
    attribution = tmp_path / "attribution.jsonl"
    write_jsonl(attribution, ({"id": ex, "chains": [list(c) for c in chains[ex]]} for ex in ids))
    config = SelectionConfig(budget=50)
    result = select(config, ids, chains, tree, node_accuracy=accuracy)
    fingerprints = {"corpus": "c0", "attribution": fingerprint_file(attribution), "profile": "p0"}
    path = tmp_path / "run" / "manifest.json"
    write_manifest(path, result, config, fingerprints)
    saved = json.loads(path.read_text())
    assert saved["ids"] == result.ids
    assert saved["drawn_leaf"][result.ids[0]] == format_chain(result.drawn_leaf[result.ids[0]])
    assert sum(saved["target"].values()) == pytest.approx(1.0)
    assert load_manifest(path, fingerprints, config) == result.ids

    with attribution.open("a") as f:
        f.write(json.dumps({"id": "late", "chains": []}) + "\n")
    changed = dict(fingerprints, attribution=fingerprint_file(attribution))
    assert changed["attribution"] != fingerprints["attribution"]
    with pytest.raises(DataError, match=r"attribution changed since this selection was made; delete the manifest"):
        load_manifest(path, changed, config)
    with pytest.raises(DataError, match=r"config \(budget: 50 -> 60\)"):
        load_manifest(path, fingerprints, SelectionConfig(budget=60))
    with pytest.raises(DataError, match="profile"):
        load_manifest(path, {k: v for k, v in fingerprints.items() if k != "profile"}, config)


def test_profile_and_verdict_readers(tree, tmp_path):
    leaf = tree.leaf_chains[0]
    write_json(tmp_path / "profile.json", {"nodes": [
        {"chain": "", "judged": 3, "accuracy": 0.5},
        {"chain": leaf[0], "judged": 3, "accuracy": 0.5},
        {"chain": format_chain(leaf), "judged": 2, "accuracy": 0.25},
        {"chain": format_chain(tree.leaf_chains[1]), "judged": 0, "accuracy": None}]})
    accuracy, judged = read_profile_nodes(tmp_path / "profile.json", tree)
    assert accuracy == {leaf[:1]: 0.5, leaf: 0.25}
    assert judged == {leaf[:1]: 3, leaf: 2, tree.leaf_chains[1]: 0}
    write_json(tmp_path / "other.json", {"nodes": [{"chain": "Algebra->juggling", "judged": 1, "accuracy": 1.0}]})
    with pytest.raises(DataError, match="'Algebra->juggling', which is not in the tree"):
        read_profile_nodes(tmp_path / "other.json", tree)
    rows = [{"id": "a", "sample": 0, "correct": True}, {"id": "a", "sample": 1, "correct": False},
            {"id": "b", "sample": 0, "correct": False}]
    write_jsonl(tmp_path / "verdicts.jsonl", rows)
    with open(tmp_path / "verdicts.jsonl", "a") as f:
        f.write('{"id": "c", "sam')  # an interrupted append
    assert read_mean_correctness(tmp_path / "verdicts.jsonl") == {"a": 0.5, "b": 0.0}


# ---- report ------------------------------------------------------------------------------------------------
def _write_stage_inputs(tree: SkillTree, tree_path: Path, out: Path, n: int = 600) -> dict:
    """Pool, attribution, profile.json (the profile stage's node format) and verdicts written like the pipeline."""
    ids, chains, _ = make_pool(tree, n, seed=8)
    rng = np.random.default_rng(8)
    correct = {ex: bool(rng.random() < 0.4) for ex in ids}
    write_jsonl(out / "pool.jsonl", ({"id": ex, "problem": f"What is {i} + 1?", "trace": "<think>\nadd\n</think>\n\n"
                                      f"\\boxed{{{i + 1}}}", "answer": str(i + 1), "pass_rate": None}
                                     for i, ex in enumerate(ids)))
    write_jsonl(out / "attribution.jsonl", ({"id": ex, "chains": [list(c) for c in chains[ex]]} for ex in ids))
    write_jsonl(out / "verdicts.jsonl", ({"id": ex, "sample": 0, "correct": correct[ex], "extracted": None,
                                          "num_tokens": 10, "truncated": False} for ex in ids))
    tally: dict = {}
    for ex in ids:
        nodes = {c[:d] for c in chains[ex] for d in range(1, len(c) + 1)}
        for node in nodes:
            right, judged = tally.get(node, (0, 0))
            tally[node] = (right + correct[ex], judged + 1)
    write_json(out / "profile.json", {"tree": str(tree_path), "nodes": [
        {"chain": format_chain(c), "depth": len(c), "is_leaf": tree.is_leaf_chain(c), "correct": r, "judged": j,
         "accuracy": r / j} for c, (r, j) in tally.items()]})
    return {"pool": str(out / "pool.jsonl"), "attribution": str(out / "attribution.jsonl"),
            "profile": str(out / "profile.json"), "verdicts": str(out / "verdicts.jsonl")}


def test_select_report_stage_writes_manifest_table_and_plot(tree, shared_dir, tmp_path, monkeypatch):
    from skill_distill.__main__ import main
    from skill_distill.decontamination import run_decontaminate

    tree_path = shared_dir / "skill_trees" / "skill_mix.json"
    files = _write_stage_inputs(tree, tree_path, tmp_path)
    assert shared_dir.is_dir()  # the registered sets resolve through the SKILL_DISTILL_DATA mirror
    counts = run_decontaminate(files["pool"], str(tmp_path / "clean" / "pool.jsonl"))  # its counts go to the manifest
    files["pool"] = str(tmp_path / "clean" / "pool.jsonl")
    config = tmp_path / "select.yaml"
    config.write_text("\n".join([f"pool: {files['pool']}", f"tree: {tree_path}", f"attribution: {files['attribution']}",
                                 f"profile: {files['profile']}", f"verdicts: {files['verdicts']}",
                                 f"output_dir: {tmp_path / 'out'}", "selection:", "  budget: 120",
                                 "  wrong_share: 0.5", ""]))
    main(["select-report", "--config", str(config)])  # the CLI table entry, through jsonargparse

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(manifest["ids"]) == len(set(manifest["ids"])) == 120
    assert set(manifest["fingerprints"]) == {"corpus", "tree", "attribution", "profile", "verdicts"}
    assert manifest["fingerprints"]["profile"] == fingerprint_file(files["profile"])
    assert manifest["decontamination"]["checked"] == counts["checked"] > 0
    assert manifest["decontamination"]["removed"] == 0
    verdicts = {json.loads(line)["id"]: json.loads(line)["correct"] for line in open(files["verdicts"])}
    assert sum(not verdicts[ex] for ex in manifest["ids"]) == 60
    assert load_manifest(tmp_path / "out" / "manifest.json", manifest["fingerprints"],
                         SelectionConfig(budget=120, wrong_share=0.5)) == manifest["ids"]

    report = (tmp_path / "out" / "selection_report.md").read_text()
    table_rows = [line for line in report.splitlines() if "->" in line and line.startswith("| ")]
    assert len(table_rows) == len(tree.leaf_chains)
    for leaf in tree.leaf_chains:
        assert f"| {format_chain(leaf)} |" in report
    assert all(f"| {t} |" in report for t in tree.topics())
    png = (tmp_path / "out" / "selection_report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_shipped_quickstart_config_runs_on_the_quickstart_data(tmp_path, monkeypatch):
    """configs/pipeline/select_report_quickstart.yaml on the shipped data/quickstart pool, tree and attribution
    (the profile is written here: the profile stage's output is not part of the repository)."""
    from skill_distill.__main__ import main

    quick = SkillTree.load(REPO / "data" / "quickstart" / "tree.json")
    weak = quick.leaf_chains[0]
    write_json(tmp_path / "profile.json", {"nodes": [
        {"chain": format_chain(c), "judged": 10, "accuracy": 0.05 if c == weak else 0.9} for c in quick.all_chains()]})
    monkeypatch.chdir(REPO)  # the config's paths are relative to the repository
    main(["select-report", "--config", "configs/pipeline/select_report_quickstart.yaml",
          "--profile", str(tmp_path / "profile.json"), "--output_dir", str(tmp_path / "out")])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert len(set(manifest["ids"])) == manifest["config"]["budget"] == 96
    drawn = Counter(manifest["drawn_leaf"].values())
    # the weak leaf has weight 20 against 1.1 for each other leaf: about half the draws, far above its pool share
    assert manifest["target"][format_chain(weak)] == pytest.approx(20 / (20 + (len(quick.leaf_chains) - 1) / 0.9))
    assert drawn[format_chain(weak)] > 0.3 * 96 > 3 * manifest["pool"][format_chain(weak)] * 96


def _portion_pool(tree):
    """Leaf A: 6 right, 2 wrong; leaf B: 1 right, 5 wrong (one chain per example)."""
    A, B = tree.leaf_chains[0], tree.leaf_chains[1]
    chains, correct = {}, {}
    for leaf, name, right, wrong in ((A, "a", 6, 2), (B, "b", 1, 5)):
        for i in range(right + wrong):
            chains[f"{name}{i}"] = [leaf]
            correct[f"{name}{i}"] = 1.0 if i < right else 0.0
    return A, B, chains, correct


def _reference_cut(n_right: int, n_wrong: int, p: float) -> tuple[int, int]:
    """``collect_leaf_node_with_wrong_items`` of the reference (docs/METHOD.md, appendix), line for line."""
    num_total_correct = n_right // p if p > 0 else float("inf")
    num_total_incorrect = n_wrong // (1 - p) if p < 1 else float("inf")
    min_num_total = int(min(num_total_correct, num_total_incorrect))
    return int(min_num_total * p), int(min_num_total * (1 - p))


@pytest.mark.parametrize("portion,kept", [(0.5, {"A": (2, 2), "B": (1, 1)}), (1.0, {"A": (6, 0), "B": (1, 0)}),
                                          (0.0, {"A": (0, 2), "B": (0, 5)}), (0.75, {"A": (6, 2), "B": (0, 0)}),
                                          (0.3, {"A": (0, 1), "B": (0, 2)}), (0.2, {"A": (0, 1), "B": (0, 3)})])
def test_correct_portion_cuts_each_leaf_as_the_reference(tree, portion, kept):
    """docs/METHOD.md, appendix: per leaf n = int(min(#right // p, #wrong // (1 - p))) (floors), int(n p) right and
    int(n (1 - p)) wrong; with a budget above the cut lists every kept example is selected, and the note counts the
    examples left after the cut (p = 0.75: the reference keeps nothing of B and selects 8)."""
    A, B, chains, correct = _portion_pool(tree)
    assert {name: _reference_cut(r, w, portion) for name, r, w in (("A", 6, 2), ("B", 1, 5))} == kept
    r = select(SelectionConfig(budget=100, correct_portion=portion), list(chains), chains, tree,
               node_accuracy={A: 0.5, B: 0.25}, correct_by_id=correct)
    got = {name: (sum(1 for i in r.ids if i.startswith(p) and correct[i] == 1.0),
                  sum(1 for i in r.ids if i.startswith(p) and correct[i] == 0.0))
           for name, p in (("A", "a"), ("B", "b"))}
    assert got == kept
    n_kept = sum(a + b for a, b in kept.values())
    assert len(r.ids) == r.eligible == n_kept
    assert f"only {n_kept} eligible examples for a budget of 100: all of them selected" in r.notes
    # the global wrong_share is a different rule: half of the budget wrong over the whole pool, not per leaf
    g = select(SelectionConfig(budget=8, wrong_share=0.5), list(chains), chains, tree,
               node_accuracy={A: 0.5, B: 0.25}, correct_by_id=correct)
    assert sum(correct[i] == 0.0 for i in g.ids) == 4


def test_correct_portion_sampler_has_the_literal_loops_distribution(tree):
    """Over the cut lists, the one-pass sampler draws like the literal leaf-then-example loop."""
    A, B, chains, correct = _portion_pool(tree)
    ids = list(chains)
    runs = 2000
    fast, literal = Counter(), Counter()
    for seed in range(runs):
        r = select(SelectionConfig(budget=1, seed=seed, correct_portion=0.5), ids, chains, tree,
                   node_accuracy={A: 0.5, B: 0.25}, correct_by_id=correct)
        fast[r.drawn_leaf[r.ids[0]]] += 1
        (_, leaf), = sample_by_skill_literal({0: [0, 1, 2, 3], 1: [4, 5]}, {0: 2.0, 1: 4.0}, 1,
                                             np.random.default_rng(seed))
        literal[(A, B)[leaf]] += 1
    expected = np.array([2 / 6, 4 / 6]) * runs  # the leaf is picked by weight: w(A) = 2, w(B) = 4
    for counts in (fast, literal):
        assert stats.chisquare(np.array([counts[A], counts[B]]), expected).pvalue > 0.001
    with pytest.raises(ConfigError, match="correct_portion"):
        SelectionConfig(correct_portion=0.5, wrong_share=0.5).validate()


def test_a_bad_selection_setting_is_rejected_when_parsed_before_any_input_is_read(tmp_path, capsys):
    """SelectionConfig checks itself on construction: the stage stops on the setting (one line, exit 2) before it
    reads the (here missing) pool, not inside select()."""
    from skill_distill.__main__ import main

    with pytest.raises(ConfigError, match=r"selection.budget=0: must be at least 1"):
        SelectionConfig(budget=0)
    with pytest.raises(ConfigError, match=r"selection.difficulty_band=\(0.7, 0.2\)"):
        SelectionConfig(strategy="difficulty", difficulty_band=(0.7, 0.2))
    with pytest.raises(SystemExit) as stop:
        main(["select-report", "--config", str(REPO / "configs" / "pipeline" / "select_report_quickstart.yaml"),
              "--pool", str(tmp_path / "missing.jsonl"), "--output_dir", str(tmp_path / "out"),
              "--selection.budget=0"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err == "error: selection.budget=0: must be at least 1"
    assert not (tmp_path / "out").exists()
