"""A user's own data (issue 27): chat rows, extra fields kept in the pool, labelled attribution onto a tree built
from a label column, a seeded ``limit``, and one-line refusals naming the row, the field and the fix."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from skill_distill.attribution import run_attribution
from skill_distill.corpus import CorpusFields, load_corpus
from skill_distill.decontamination import DecontaminationConfig
from skill_distill.io import ConfigError, DataError, read_jsonl
from skill_distill.labels import tree_from_labels
from skill_distill.pool import PoolDraw, PoolFilter, PoolSource, run_pool
from skill_distill.skill_tree import SkillTree

CATEGORIES = ["Algebra", "Combinatorics", "Geometry", "Number Theory", "Probability"]
NO_DECONTAMINATION = DecontaminationConfig(enabled=False)


def chat_rows(per_category: int = 20, boxed: bool = True) -> list[dict]:
    """Chat-format rows sorted by category (as a competition extract is): a user turn, an assistant turn with a
    thinking block, an answer and a ``category``."""
    rows = []
    for c, category in enumerate(CATEGORIES):
        for k in range(per_category):
            answer = str(7 * k + c)
            solution = f"\\boxed{{{answer}}}" if boxed else answer
            rows.append({"uid": f"{category[:3]}-{k}", "category": category, "answer": answer, "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"{category} problem {k}: compute 7*{k} + {c}."},
                {"role": "assistant", "content": f"<think>\n7*{k} = {7 * k}, plus {c}.\n</think>\n\nSo {solution}."},
            ]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CHAT = CorpusFields(id="uid", messages="messages", answer="answer")


def test_chat_rows_and_kept_fields_reach_labelled_attribution_on_a_tree_from_the_labels(tmp_path):
    corpus = write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    stats = run_pool(PoolSource(corpus=str(corpus), fields=CHAT, keep_fields=["category"]), str(tmp_path / "pool"),
                     PoolDraw(heldout=10), decontamination=NO_DECONTAMINATION)
    pool = read_jsonl(tmp_path / "pool" / "pool.jsonl")
    assert stats["pool"] == len(pool) == 90
    first = next(r for r in pool if r["id"] == "Alg-3")
    assert first["problem"] == "Algebra problem 3: compute 7*3 + 0."  # the user turn, not the system turn
    assert first["trace"].startswith("<think>\n7*3 = 21") and first["trace"].endswith("\\boxed{21}.")
    assert first["category"] == "Algebra" and set(first) == {"id", "problem", "trace", "answer", "pass_rate",
                                                             "category"}
    assert load_corpus(tmp_path / "pool" / "pool.jsonl")[0].problem == pool[0]["problem"]  # still a canonical pool

    out = tmp_path / "attribution"
    stats = run_attribution(str(tmp_path / "pool" / "pool.jsonl"), None, str(out), label_field="category",
                            tree_from_labels=True)
    tree = SkillTree.load(out / "skill_tree_used.json")
    assert tree.topics() == CATEGORIES and tree.depth == 1
    chains = {r["id"]: r["chains"] for r in read_jsonl(out / "attribution.jsonl")}
    assert stats["examples"] == 90 and stats["examples_without_chain"] == 0
    assert chains == {r["id"]: [[r["category"]]] for r in pool}


def test_a_tree_from_chain_labels_has_their_depth():
    rows = [{"skill": "Algebra->Linear equations"}, {"skill": ["Geometry->Circles", "Algebra->Quadratics"]},
            {"skill": "Geometry->Circles"}]
    tree, label_map = tree_from_labels(rows, "skill", name="mine")
    assert tree.to_dict() == {"name": "mine", "children": [
        {"name": "Algebra", "children": [{"name": "Linear equations"}, {"name": "Quadratics"}]},
        {"name": "Geometry", "children": [{"name": "Circles"}]}]}
    assert label_map["Geometry->Circles"] == ("Geometry", "Circles")
    with pytest.raises(DataError, match=r"row 2: missing label field 'skill'.*source.keep_fields"):
        tree_from_labels([{"skill": "A"}, {"other": 1}], "skill", source="pool.jsonl")


def test_limit_is_a_seeded_sample_that_covers_the_categories_in_proportion(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [  # a canonical pool in source order: sorted by category
        {"id": r["uid"], "problem": r["messages"][1]["content"], "trace": r["messages"][2]["content"],
         "answer": r["answer"], "pass_rate": None, "category": r["category"]} for r in chat_rows(per_category=40)])
    out = tmp_path / "attribution"
    run_attribution(str(pool), None, str(out), label_field="category", tree_from_labels=True, limit=100)
    rows = read_jsonl(out / "attribution.jsonl")
    got = Counter(r["chains"][0][0] for r in rows)
    assert len(rows) == 100 and set(got) == set(CATEGORIES)  # the first 100 rows would hold 3 categories
    assert all(10 <= n <= 30 for n in got.values()), got  # 20 each in proportion; binomial sd 4
    again = tmp_path / "again"
    run_attribution(str(pool), None, str(again), label_field="category", tree_from_labels=True, limit=100)
    assert read_jsonl(again / "attribution.jsonl") == rows  # seeded: the same sample every time


def test_a_non_string_field_mapped_to_text_is_one_line_naming_row_field_and_fix(tmp_path):
    corpus = write_jsonl(tmp_path / "chat.jsonl", chat_rows(per_category=2))
    with pytest.raises(DataError) as e:
        run_pool(PoolSource(corpus=str(corpus), fields=CorpusFields(id="uid", problem="messages", trace="answer")),
                 str(tmp_path / "pool"), decontamination=NO_DECONTAMINATION)
    msg = str(e.value)
    assert "\n" not in msg and f"{corpus}: row 1: field 'messages' (problem) holds a list, not text" in msg
    assert "set fields.messages" in msg
    with pytest.raises(DataError, match=r"row 1: field 'messages' \(problem\) holds a list"):
        load_corpus(corpus, CorpusFields(id="uid", problem="messages", trace="answer"))
    rows = chat_rows(per_category=2)
    rows[3]["messages"] = "just text"
    with pytest.raises(DataError, match=r"row 4: field 'messages' \(messages\) must be a list of"):
        load_corpus(write_jsonl(tmp_path / "bad.jsonl", rows), CHAT)
    no_category = write_jsonl(tmp_path / "nocat.jsonl", [{k: v for k, v in r.items() if k != "category"}
                                                          for r in rows[:3]])
    with pytest.raises(DataError, match=r"row 1: missing field 'category' of source.keep_fields"):
        run_pool(PoolSource(corpus=str(no_category), fields=CHAT, keep_fields=["category"]), str(tmp_path / "p2"),
                 decontamination=NO_DECONTAMINATION)
    with pytest.raises(ConfigError, match="keep_fields.*'answer'.*canonical"):
        PoolSource(corpus="x.jsonl", keep_fields=["answer"])


def test_the_think_close_drop_names_its_setting(tmp_path):
    rows = chat_rows(per_category=1)
    for r in rows:
        r["messages"][2]["content"] = "So the answer is 3."
    with pytest.raises(DataError, match=r"dropped: 5 no_think_close \(filters.require_think_close\)"):
        run_pool(PoolSource(corpus=str(write_jsonl(tmp_path / "c.jsonl", rows)), fields=CHAT),
                 str(tmp_path / "pool"), decontamination=NO_DECONTAMINATION)
    stats = run_pool(PoolSource(corpus=str(tmp_path / "c.jsonl"), fields=CHAT), str(tmp_path / "pool"),
                     filters=PoolFilter(require_think_close=False), decontamination=NO_DECONTAMINATION)
    assert stats["pool"] == 5


def test_a_tree_with_repeated_siblings_can_be_refused_where_attribution_loads_it(tmp_path):
    tree = tmp_path / "tree.json"
    tree.write_text(json.dumps({"name": "r", "children": [{"name": "A"}, {"name": "A"}]}))
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": "1", "problem": "p", "trace": "t", "answer": "1",
                                                 "label": "A"}])
    with pytest.raises(DataError, match="duplicate child name 'A'"):
        run_attribution(str(pool), str(tree), str(tmp_path / "out"), label_field="label", label_map={"A": ["A"]},
                        duplicate_siblings="error")
    stats = run_attribution(str(pool), str(tree), str(tmp_path / "out"), label_field="label", label_map={"A": ["A"]})
    assert stats["examples_without_chain"] == 0  # merged by default


# ---- warnings that name the fix, on crafted inputs ------------------------------------------------------------------
def test_unboxed_traces_are_flagged_and_the_reference_answer_can_be_appended_boxed(tmp_path, capsys):
    from skill_distill.grading import extract_answer

    corpus = write_jsonl(tmp_path / "chat.jsonl", chat_rows(per_category=4, boxed=False))
    stats = run_pool(PoolSource(corpus=str(corpus), fields=CHAT), str(tmp_path / "plain"),
                     decontamination=NO_DECONTAMINATION)
    assert stats["traces_without_boxed"] == 20 and len(stats["warnings"]) == 1
    out = capsys.readouterr().out
    assert "[pool] warning: 20 of 20 pool traces (100%) have no \\boxed{answer}" in out
    assert "source.append_boxed_answer: true" in out

    stats = run_pool(PoolSource(corpus=str(corpus), fields=CHAT, append_boxed_answer=True), str(tmp_path / "boxed"),
                     decontamination=NO_DECONTAMINATION)
    assert stats["warnings"] == [] and stats["boxed_answers_appended"] == 20 and stats["traces_without_boxed"] == 0
    for row in read_jsonl(tmp_path / "boxed" / "pool.jsonl"):
        assert row["trace"].endswith(f"The final answer is \\boxed{{{row['answer']}}}.")
        assert extract_answer(row["trace"]) == row["answer"]  # what evaluation grades


@pytest.mark.slow
def test_junk_attribution_warns_on_cut_replies_and_too_many_chains(tmp_path, qwen_tokenizer_dir, capsys):
    import re

    from scripted_endpoint import ScriptedEndpoint
    from skill_distill.generation.base import SamplingConfig
    from skill_distill.generation.factory import OpenAIConfig

    tree = tmp_path / "tree.json"  # depth 2, 4 topics of 5 skills: picking every child gives 20 chains
    tree.write_text(json.dumps({"name": "Math", "children": [
        {"name": f"T{t}", "children": [{"name": f"s{t}{k}"} for k in range(5)]} for t in range(4)]}))
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"id": f"p{i}", "problem": f"Problem {i}", "trace": "<think>x</think>y", "answer": "1"} for i in range(3)])

    def every_child_cut_off(prompt: str, body: dict):
        listed = prompt.split("### Sub-skills of this category\n", 1)[1].split("\n\n", 1)[0]
        return [(json.dumps(re.findall(r"^- (.+)$", listed, flags=re.M)), "length")]

    with ScriptedEndpoint(every_child_cut_off) as endpoint:
        backend = OpenAIConfig(model="scripted", tokenizer=str(qwen_tokenizer_dir), base_url=endpoint.base_url,
                               max_retries=0)
        stats = run_attribution(str(pool), str(tree), str(tmp_path / "out"), backend,
                                sampling=SamplingConfig(temperature=0.3, max_new_tokens=16, seed=1))
    assert stats["examples_without_chain"] == 0 and stats["chains"] == 60
    out = capsys.readouterr().out
    assert "[attribute] warning: 15 of 15 attributor replies (100%) were cut at sampling.max_new_tokens (16)" in out
    assert "[attribute] warning: 20.0 chains per example, more than 3x the tree's depth 2 (> 6)" in out
    assert len(json.loads((tmp_path / "out" / "attribution_stats.json").read_text())["warnings"]) == 2


@pytest.mark.slow
def test_a_profile_that_extracts_answers_unlike_evaluation_says_so(tmp_path, qwen_tokenizer_dir, capsys):
    from scripted_endpoint import ScriptedEndpoint
    from skill_distill.generation.factory import OpenAIConfig
    from skill_distill.profile import run_profile

    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"id": f"p{i}", "problem": f"Problem {i}", "trace": "", "answer": "3", "category": "A"} for i in range(2)])
    run_attribution(str(pool), None, str(tmp_path / "attr"), label_field="category", tree_from_labels=True)
    with ScriptedEndpoint(lambda prompt, body: "So it is 3.") as endpoint:
        backend = OpenAIConfig(model="scripted", tokenizer=str(qwen_tokenizer_dir), base_url=endpoint.base_url,
                               max_retries=0)
        run = {"pool": str(pool), "tree": str(tmp_path / "attr" / "skill_tree_used.json"),
               "attribution": str(tmp_path / "attr" / "attribution.jsonl"), "backend": backend}
        fallback = run_profile(output_dir=str(tmp_path / "fallback"), answer_fallback="last_number", **run)
        strict = run_profile(output_dir=str(tmp_path / "strict"), **run)
    assert fallback["overall_accuracy"] == 1.0 and strict["overall_accuracy"] == 0.0  # the two measure differently
    out = capsys.readouterr().out
    assert out.count("[profile] warning: the profile grades an unboxed answer by its last number") == 1
    assert "set answer_fallback: none" in out
