"""Benchmark loading: the registered sets on the real files, field mapping declared in config for a new format,
skill labels (MATH-500 ``subject`` onto the skill tree, attribution files), and one-line errors for bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from skill_distill.eval_sets import (
    PAPER_SUITE,
    REGISTRY,
    BenchmarkSpec,
    SkillSource,
    extract_answers,
    load_benchmark,
    resolve_spec,
)
from skill_distill.io import DataError
from skill_distill.labels import MATH_SUBJECT_TO_SKILL_MIX
from skill_distill.skill_tree import SkillTree

EXPECTED = {"aime24": (30, 8), "aime25": (30, 8), "amc23": (40, 8), "math500": (500, 1), "math-l5": (134, 8),
            "olympiadbench": (581, 1)}
"""Problems and samples per problem (docs/METHOD.md §7). OlympiadBench: 581 of the 675 rows are single-answer (none of
the text-only file's rows has an image)."""


@pytest.fixture(scope="module")
def root(shared_dir) -> Path:
    return shared_dir / "data" / "benchmarks"


@pytest.fixture(scope="module")
def skill_mix() -> SkillTree:
    return SkillTree.load("asset:tree/skill_mix")


def raw_rows(root: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (root / name / "test.jsonl").open() if line.strip()]


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("name", list(EXPECTED))
def test_registered_benchmarks_load_with_the_paper_counts(name):
    b = load_benchmark(name)
    problems, k = EXPECTED[name]
    assert len(b.problems) == problems and b.k == k
    assert len({p.id for p in b.problems}) == problems  # ids are unique
    assert [p.index for p in b.problems] == list(range(problems))
    assert all(p.problem.strip() and p.answers and all(a.strip() for a in p.answers) for p in b.problems)


def test_registered_sets_read_the_right_fields(root):
    aime24 = load_benchmark("aime24")
    assert aime24.problems[0].id == "60" and aime24.problems[0].answers == ["204"]
    aime25 = load_benchmark("aime25")  # no id field: rows are numbered
    assert aime25.problems[0].id == "0" and aime25.problems[29].id == "29" and aime25.problems[0].answers == ["70"]
    amc = load_benchmark("amc23")
    assert amc.problems[0].answers == ["27"]  # stored as the float 27.0
    rows = raw_rows(root, "math500")
    level5 = [r["unique_id"] for r in rows if r["level"] == 5]
    l5 = load_benchmark("math-l5")
    assert [p.id for p in l5.problems] == level5
    assert l5.problems[0].answers == [next(r["answer"] for r in rows if r["unique_id"] == level5[0])]
    olympiad = load_benchmark("olympiadbench")
    raw = {str(r["id"]): r for r in raw_rows(root, "olympiadbench")}
    assert all(raw[p.id]["is_multiple_answer"] is False for p in olympiad.problems)
    assert all(p.answers == raw[p.id]["final_answer"] for p in olympiad.problems)  # the one-element list
    assert olympiad.problems[0].problem == raw[olympiad.problems[0].id]["question"].strip()  # context is "None"
    assert set(PAPER_SUITE) <= set(REGISTRY) and "math500" not in PAPER_SUITE


def test_a_spec_named_like_a_registered_set_overrides_only_what_it_sets():
    spec = resolve_spec({"name": "math-l5", "k": 1, "limit": 5})
    assert spec.path == "asset:bench/math500" and spec.where == {"level": 5} and spec.k == 1 and spec.limit == 5
    b = load_benchmark(spec)
    assert len(b.problems) == 5 and b.k == 1


def test_registered_sets_read_their_pinned_files_and_a_hub_copy_replaces_the_file(tmp_path, monkeypatch, root):
    from skill_distill.assets import resolve

    for name, spec in REGISTRY.items():
        assert spec.path.startswith("asset:bench/") and resolve(spec.path).endswith("/test.jsonl"), name
    assert load_benchmark("aime24").source == resolve("asset:bench/aime24")
    hub = resolve_spec({"name": "math-l5", "hf_name": "HuggingFaceH4/MATH-500"})
    assert hub.path is None and hub.hf_name == "HuggingFaceH4/MATH-500" and hub.where == {"level": 5} and hub.k == 8
    own = resolve_spec({"name": "aime24", "path": "aime24/test.jsonl"})  # a relative path, found under data_root
    assert load_benchmark(own, root).source == str(root / "aime24" / "test.jsonl")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as e:
        load_benchmark(own)  # not under the working directory
    assert "aime24/test.jsonl" in one_line_error(e) and "data_root" in one_line_error(e)


def test_field_mapping_in_config_reads_a_new_format(tmp_path):
    """A GSM8K-style file: problem in `question`, answer after `####` in `solution`, id in `qid`, a filter."""
    rows = [{"qid": "a", "question": "What is 40 + 2?", "solution": "40 + 2 = 42.\n#### 42", "split": "test"},
            {"qid": "b", "question": "What is 1000 + 234?", "solution": "Add.\n#### 1,234", "split": "test"},
            {"qid": "c", "question": "Skip me.", "solution": "#### 0", "split": "train"},
            {"qid": "d", "question": "Half of 7?", "solution": "It is $\\boxed{\\frac{7}{2}}$.\n#### 3.5",
             "split": "test"}]
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = yaml.safe_load(f"""
benchmarks:
  - aime24
  - name: gsm-mini
    path: {path}
    id_field: qid
    problem_field: question
    answer_field: solution
    answer_rule: after_hashes
    where: {{split: test}}
    k: 2
  - name: gsm-boxed
    path: {path}
    id_field: qid
    problem_field: question
    answer_field: solution
    answer_rule: last_boxed
    where: {{qid: d}}
""")
    parser = ArgumentParser()
    parser.add_argument("--benchmarks", type=list[str | BenchmarkSpec])
    specs = parser.instantiate(parser.parse_object(config)).benchmarks
    assert specs[0] == "aime24" and isinstance(specs[1], BenchmarkSpec)
    gsm = load_benchmark(specs[1])
    assert [(p.id, p.problem, p.answers) for p in gsm.problems] == [
        ("a", "What is 40 + 2?", ["42"]), ("b", "What is 1000 + 234?", ["1234"]), ("d", "Half of 7?", ["3.5"])]
    assert gsm.k == 2
    boxed = load_benchmark(specs[2])
    assert [p.answers for p in boxed.problems] == [["\\frac{7}{2}"]]
    assert extract_answers("['1', '2']", "list") == ["1", "2"] and extract_answers(["$x$"], "list") == ["$x$"]


def test_math500_subject_maps_onto_skill_mix_topics(root, skill_mix):
    spec = BenchmarkSpec("math500", skills=SkillSource(label_field="subject", label_map=MATH_SUBJECT_TO_SKILL_MIX))
    b = load_benchmark(spec, tree=skill_mix)
    assert b.skill_level == "topic" and b.tree.depth == 1 and len(b.tree.leaf_chains) == 7
    assert any("topic-level" in n for n in b.notes)
    subjects = Counter(r["subject"] for r in raw_rows(root, "math500"))
    topics = Counter(c[0] for chains in b.chains.values() for c in chains)
    assert topics == Counter({MATH_SUBJECT_TO_SKILL_MIX[s][0]: n for s, n in subjects.items()})
    assert all(len(chains) == 1 for chains in b.chains.values()) and len(b.chains) == 500


def test_subject_maps_onto_leaves_and_attribution_files_attach_chains(tmp_path, root, skill_mix):
    leaf_map = {"Number Theory": "Number Theory->modular arithmetic", "Algebra": "Algebra->solving equations"}
    spec = BenchmarkSpec("math500", limit=40,
                         skills=SkillSource(label_field="subject", label_map=leaf_map, on_unknown="drop"))
    b = load_benchmark(spec, tree=skill_mix)
    assert b.skill_level == "leaf" and b.tree is skill_mix
    raw = {r["unique_id"]: r["subject"] for r in raw_rows(root, "math500")}
    assert {p.id for p in b.problems if raw[p.id] in leaf_map} == set(b.chains)
    assert all(b.chains[i] == [tuple(leaf_map[raw[i]].split("->"))] for i in b.chains)

    attribution = tmp_path / "aime_attr.jsonl"
    attribution.write_text(json.dumps({"id": "60", "chains": [["Algebra", "solving equations"]]}) + "\n"
                           + json.dumps({"id": "61", "chains": [["Probability", "combinatorics knowledge"],
                                                                ["Algebra", "solving equations"]]}) + "\n")
    aime = load_benchmark(BenchmarkSpec("aime24", skills=SkillSource(attribution=str(attribution))), tree=skill_mix)
    assert aime.chains == {"60": [("Algebra", "solving equations")],
                           "61": [("Probability", "combinatorics knowledge"), ("Algebra", "solving equations")]}
    assert any("28 of 30 problems have no skill chain" in n for n in aime.notes)


def test_limit_per_skill_balances_the_quickstart_heldout_slice():
    repo = Path(__file__).resolve().parents[1] / "data" / "quickstart"
    tree = SkillTree.load(repo / "tree.json")
    b = load_benchmark(BenchmarkSpec("heldout", path=str(repo / "heldout.jsonl"), limit_per_skill=4,
                                     skills=SkillSource(attribution=str(repo / "attribution.jsonl"))), tree=tree)
    assert len(b.problems) == 56
    assert set(Counter(b.chains[p.id][0] for p in b.problems).values()) == {4}


# ---- bad input: one DataError line each ------------------------------------------------------------------------
def test_missing_answer_field_is_one_line(tmp_path):
    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps({"id": 1, "problem": "1+1?", "answer": "2"}) + "\n"
                    + json.dumps({"id": 2, "problem": "2+2?", "final": "4"}) + "\n")
    with pytest.raises(DataError) as e:
        load_benchmark(BenchmarkSpec("mine", path=str(path)))
    message = one_line_error(e)
    assert str(path) in message and "row 2" in message and "'answer'" in message and "answer_field" in message


def test_unknown_benchmark_name_is_one_line():
    with pytest.raises(DataError) as e:
        load_benchmark("aime2024")
    message = one_line_error(e)
    assert "'aime2024'" in message and "aime24" in message


def test_skill_label_not_in_the_tree_is_one_line(tmp_path, skill_mix):
    attribution = tmp_path / "attr.jsonl"
    attribution.write_text(json.dumps({"id": "60", "chains": [["Algebra", "telepathy"]]}) + "\n")
    with pytest.raises(DataError) as e:
        load_benchmark(BenchmarkSpec("aime24", skills=SkillSource(attribution=str(attribution))), tree=skill_mix)
    message = one_line_error(e)
    assert f"{attribution}:1" in message and "'telepathy'" in message

    bad_map = dict(MATH_SUBJECT_TO_SKILL_MIX, Geometry="Geometry")  # not a topic of skill_mix
    with pytest.raises(DataError) as e:
        load_benchmark(BenchmarkSpec("math500", skills=SkillSource(label_field="subject", label_map=bad_map)),
                       tree=skill_mix)
    assert "'Geometry'" in one_line_error(e)

    partial = {k: v for k, v in MATH_SUBJECT_TO_SKILL_MIX.items() if k != "Precalculus"}
    with pytest.raises(DataError) as e:
        load_benchmark(BenchmarkSpec("math500", skills=SkillSource(label_field="subject", label_map=partial)),
                       tree=skill_mix)
    assert "'Precalculus'" in one_line_error(e)

    with pytest.raises(DataError) as e:  # skills need a tree
        load_benchmark(BenchmarkSpec("aime24", skills=SkillSource(attribution=str(attribution))))
    assert "tree" in one_line_error(e)
