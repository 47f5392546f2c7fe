"""Per-skill evaluation: request planning and rank shares, the skill-block comparison, metrics and reports from
real grading of scripted completions (an OpenAI-compatible HTTP stand-in), and the `evaluate` stage with vLLM."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from skill_distill.eval_sets import BenchmarkSpec, SkillSource
from skill_distill.evaluation import (
    BenchmarkMetric,
    build_report,
    compute_summaries,
    evaluate_model,
    flat_metrics,
    load_benchmarks,
    parse_skill_block,
    plan_requests,
    rank_share,
    skill_block_counts,
    summarize,
    write_report,
)
from skill_distill.formatting import SkillFormat, skill_block, tree_as_text
from skill_distill.generation.base import SamplingConfig, request_seed
from skill_distill.generation.factory import OpenAIConfig
from skill_distill.grading import extract_last_boxed
from skill_distill.skill_charts import emphasised_skills, load_report
from skill_distill.skill_tree import SkillTree

sys.path.insert(0, str(Path(__file__).parent))
from scripted_endpoint import ScriptedEndpoint

REPO = Path(__file__).resolve().parents[1]
QS = REPO / "data" / "quickstart"


def heldout_spec(per_skill: int = 2, k: int = 2) -> BenchmarkSpec:
    return BenchmarkSpec("heldout", path=str(QS / "heldout.jsonl"), limit_per_skill=per_skill, k=k,
                         skills=SkillSource(attribution=str(QS / "attribution.jsonl")))


@pytest.fixture(scope="module")
def tree() -> SkillTree:
    return SkillTree.load(QS / "tree.json")


@pytest.fixture(scope="module")
def loaded(tree):
    return load_benchmarks([heldout_spec(), BenchmarkSpec("aime24", limit=3, k=2)], tree)


def test_rank_shares_are_disjoint_complete_and_keep_their_seeds(loaded):
    everything = plan_requests(loaded, base_seed=5)
    assert len(everything) == 28 * 2 + 3 * 2
    assert len({r.key for r in everything}) == len(everything)
    assert len({r.seed for r in everything}) == len(everything)  # every sample gets its own seed
    for world in (1, 2, 3, 4):
        shares = [rank_share(everything, rank, world) for rank in range(world)]
        keys = [r.key for share in shares for r in share]
        assert sorted(keys) == sorted(r.key for r in everything)  # each request exactly once
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        seeds = {r.key: r.seed for share in shares for r in share}
        assert seeds == {r.key: r.seed for r in everything}  # seeds do not depend on the split
    assert plan_requests(loaded, base_seed=6)[0].seed != everything[0].seed
    # the one request_seed (attribution uses it too) keeps the evaluation's values: recorded runs stay reproducible
    assert request_seed(3, "aime24", "2024-I-1", 5) == 460538427
    assert everything[0].seed == request_seed(5, everything[0].benchmark, everything[0].problem_id, 0)


def test_skill_block_is_parsed_and_scored_at_three_levels():
    text = ("Skills:\nArithmetic->subtraction\nAlgebra->evaluating expressions\n"
            "<think>\n12 - 5 = 7\n</think>\n\\boxed{7}")
    written = parse_skill_block(text)
    assert written == [("Arithmetic", "subtraction"), ("Algebra", "evaluating expressions")]
    assert parse_skill_block("<think>no block</think>") is None
    assert parse_skill_block("  Skills:\nAlgebra\n\nThe rest") == [("Algebra",)]
    gold = [("Arithmetic", "subtraction")]
    # samples_with_gold, with_block, chains (written, gold, matched), topics (...), leaves (...)
    assert skill_block_counts(written, gold) == [1, 1, 2, 1, 1, 2, 1, 1, 2, 1, 1]
    assert skill_block_counts(None, gold) == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0]
    assert skill_block_counts(written, []) == [0] * 11


# ---- evaluation against a scripted endpoint: known answers, real grading -------------------------------------------
WRONG_LEAF = ("Algebra", "quadratic equations")  # not a leaf of the tree: topic right, chain and leaf wrong


def expected_correct(topic: str, seed: int) -> bool:
    return topic == "Arithmetic" or (topic == "Algebra" and seed % 2 == 0)


@pytest.fixture(scope="module")
def scripted(loaded, qwen_tokenizer_dir):
    """Replies: Arithmetic always right, Algebra right on even seeds, the rest wrong; Number Theory problems
    write their true skill chain, Algebra problems a wrong leaf plus an unrelated chain, the rest no block."""
    by_problem = {p.problem: (p, b.chains.get(p.id, [])) for b in loaded for p in b.problems}

    def script(prompt: str, body: dict) -> str:
        question = prompt.split("Question: ", 1)[1].split("<|im_end|>", 1)[0]
        problem, chains = by_problem[question]
        topic = chains[0][0] if chains else None
        answer = problem.answers[0] if expected_correct(topic, body["seed"]) else problem.answers[0] + "7"
        block = ""
        if topic == "Number Theory":
            block = "Skills:\n" + "->".join(chains[0]) + "\n"
        elif topic == "Algebra":
            block = "Skills:\n" + "->".join(WRONG_LEAF) + "\nArithmetic->subtraction\n"
        return f"{block}<think>\nworking\n</think>\n\nThe answer is \\boxed{{{answer}}}."

    with ScriptedEndpoint(script) as endpoint:
        backend = OpenAIConfig(base_url=endpoint.base_url, tokenizer=str(qwen_tokenizer_dir),
                                max_retries=0, max_concurrency=4)
        sampling = SamplingConfig(temperature=0.6, max_new_tokens=64, seed=3)

        def run(rank: int = 0, world: int = 1):
            return evaluate_model("scripted", str(qwen_tokenizer_dir), loaded, backend, sampling, rank=rank,
                                  world_size=world)

        yield run(), [run(0, 2), run(1, 2)], endpoint


def test_records_are_graded_and_summarised_per_skill(scripted, loaded):
    records, _, endpoint = scripted
    heldout = loaded[0]
    assert len(records) == 62 and len({r["key"] for r in records}) == 62
    assert len(endpoint.calls) == 2 * 62  # the single-rank run and the two half runs, one request per sample
    topic = {p.id: heldout.chains[p.id][0][0] for p in heldout.problems}
    for r in records:
        want = expected_correct(topic[r["id"]], r["seed"]) if r["benchmark"] == "heldout" else False
        assert r["correct"] is want, r
        assert r["extracted"] == extract_last_boxed(r["text"])
    summaries = compute_summaries(loaded, records)
    s = summaries["heldout"]
    assert s["problems"] == 28 and s["samples"] == 56 and s["k"] == 2
    per_problem = {}
    for r in records:
        if r["benchmark"] == "heldout":
            per_problem.setdefault(r["id"], []).append(r["correct"])
    assert s["accuracy"] == pytest.approx(sum(sum(v) / len(v) for v in per_problem.values()) / 28)
    assert s["ci_low"] <= s["accuracy"] <= s["ci_high"]
    rows = {row["chain"]: row for row in s["skills"]}
    assert rows["Arithmetic"]["accuracy"] == 1.0 and rows["Arithmetic"]["judged"] == 10
    assert rows["Arithmetic->subtraction"]["accuracy"] == 1.0 and rows["Arithmetic->subtraction"]["judged"] == 2
    assert rows["Number Theory"]["accuracy"] == 0.0 and rows["Fractions and Percentages"]["accuracy"] == 0.0
    algebra = [sum(v) / 2 for pid, v in per_problem.items() if topic[pid] == "Algebra"]
    assert rows["Algebra"]["accuracy"] == pytest.approx(sum(algebra) / 6)
    for t in ("Arithmetic", "Number Theory", "Algebra", "Fractions and Percentages"):  # counts add up
        assert rows[t]["judged"] == sum(r["judged"] for c, r in rows.items() if c.startswith(t + "->"))
    assert s["mean_tokens"] > 0 and s["truncation_rate"] == 0.0
    # Number Theory (8 problems) writes the true chain, Algebra (6) a wrong leaf + a chain of another topic
    block = s["skill_block"]
    assert block["rate"] == pytest.approx(28 / 56)
    assert block["chain_precision"] == pytest.approx(16 / 40) and block["chain_recall"] == pytest.approx(16 / 56)
    assert block["topic_precision"] == pytest.approx(28 / 40) and block["topic_recall"] == pytest.approx(28 / 56)
    assert block["leaf_precision"] == pytest.approx(16 / 40)
    assert summaries["aime24"]["accuracy"] == 0.0 and summaries["aime24"]["skills"] == []
    m = flat_metrics(summaries)
    assert m["eval/heldout/acc"] == s["accuracy"] and m["eval/heldout/skill/Arithmetic/subtraction"] == 1.0
    assert m["eval/heldout/skill/Number Theory"] == 0.0 and "eval/paper_suite/acc" not in m


def test_evaluation_prompts_and_reads_the_block_as_the_training_format_wrote_it(tree, qwen_tokenizer_dir):
    """A run trained with its own header, display names and the tree in the prompt is evaluated on that prompt,
    and its written block is scored in tree names."""
    short = {"Arithmetic": "Arith", "Number Theory": "NT", "Algebra": "Alg", "Fractions and Percentages": "Frac"}
    named = SkillTree(tree.root, tree.source, short)
    fmt = SkillFormat("full", header="Skills used:", use_display_names=True, tree_in_prompt=True)
    heldout = load_benchmarks([heldout_spec(per_skill=1, k=1)], named)
    by_problem = {p.problem: heldout[0].chains[p.id] for p in heldout[0].problems}
    tree_text = tree_as_text(named, fmt)

    def script(prompt: str, body: dict) -> str:
        assert "Skill tree:\n" + tree_text in prompt
        chains = by_problem[prompt.split("Question: ", 1)[1].split("<|im_end|>", 1)[0]]
        return skill_block(chains, fmt, named) + "<think>\nworking\n</think>\n\\boxed{0}"

    with ScriptedEndpoint(script) as endpoint:
        backend = OpenAIConfig(base_url=endpoint.base_url, tokenizer=str(qwen_tokenizer_dir),
                                max_retries=0, max_concurrency=4)
        records = evaluate_model("scripted", str(qwen_tokenizer_dir), heldout, backend,
                                 SamplingConfig(max_new_tokens=16, seed=1), tree=named, skill_format=fmt)
    assert len(endpoint.calls) == len(heldout[0].problems) == 14
    assert all(r["text"].startswith("Skills used:\n") for r in records)
    assert any(r["text"].startswith("Skills used:\nArith->") for r in records)  # written in display names
    for r in records:
        assert [tuple(c.split("->")) for c in r["skills_written"]] == heldout[0].chains[r["id"]]
    block = compute_summaries(heldout, records)["heldout"]["skill_block"]
    assert block["rate"] == 1.0 and block["chain_precision"] == 1.0 and block["chain_recall"] == 1.0


def test_two_rank_shares_give_the_single_rank_records_and_metrics(scripted, loaded):
    records, (rank0, rank1), _ = scripted
    assert {r["rank"] for r in rank0} == {0} and {r["rank"] for r in rank1} == {1}
    assert not {r["key"] for r in rank0} & {r["key"] for r in rank1}
    def strip(rs):
        return sorted((r["key"], r["seed"], r["text"], r["correct"]) for r in rs)

    assert strip(rank0 + rank1) == strip(records)
    for b in loaded:  # per-rank metric states summed (what the cross-rank sync does) == one rank's
        merged = BenchmarkMetric(b)
        merged.update(rank0)
        other = BenchmarkMetric(b)
        other.update(rank1)
        merged.merge_state(other)
        single = BenchmarkMetric(b)
        single.update(records)
        assert summarize(b, merged.compute()) == summarize(b, single.compute())


def test_report_json_and_charts(scripted, loaded, tmp_path, tree):
    records, _, _ = scripted
    summaries = compute_summaries(loaded, records)
    report = build_report(loaded, records, summaries, {"tag": "epoch=0"})
    baseline = json.loads(json.dumps(report))
    baseline["tag"] = "baseline"
    for row in baseline["benchmarks"]["heldout"]["metrics"]["skills"]:
        row["accuracy"] = 0.5
    paths = write_report(tmp_path, report, baseline=baseline, emphasised={"Number Theory->modular arithmetic": 2.5})
    assert set(paths) == {"report", "summary", "skills/heldout"}  # aime24 has no skills: no per-skill chart
    for key in ("summary", "skills/heldout"):
        assert Path(paths[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(paths[key]).stat().st_size > 10_000
    saved = load_report(paths["report"])
    problems = saved["benchmarks"]["heldout"]["problems"]
    assert len(problems) == 28 and all(len(p["samples"]) == 2 for p in problems)
    sample = problems[0]["samples"][0]
    assert {"text", "extracted", "correct", "seed", "num_tokens", "finished", "skills_written"} <= set(sample)
    assert saved["summary"]["heldout"]["accuracy"] == summaries["heldout"]["accuracy"]
    assert saved["metrics"]["eval/heldout/acc"] == summaries["heldout"]["accuracy"]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_emphasised_skills_come_from_the_selection_manifest(tmp_path, tree):
    from skill_distill.selection import SelectionConfig, select, write_manifest
    from skill_distill.skill_stats import load_attribution

    pool = [json.loads(line)["id"] for line in (QS / "pool.jsonl").open()]
    chains = load_attribution(QS / "attribution.jsonl", tree)
    accuracy = {leaf: (0.05 if leaf[0] == "Number Theory" else 0.9) for leaf in tree.leaf_chains}
    config = SelectionConfig(strategy="skill", budget=96, seed=42)
    result = select(config, pool, chains, tree, node_accuracy=accuracy)
    write_manifest(tmp_path / "selection_manifest.json", result, config, {})
    marked = emphasised_skills(tmp_path / "selection_manifest.json", min_ratio=1.2)
    assert set(marked) == {"->".join(leaf) for leaf in tree.leaf_chains if leaf[0] == "Number Theory"}
    assert all(ratio >= 1.2 for ratio in marked.values())
    random = SelectionConfig(strategy="random", budget=96, seed=42)
    write_manifest(tmp_path / "random.json", select(random, pool, chains, tree), random, {})
    assert emphasised_skills(tmp_path / "random.json") == {} and emphasised_skills(tmp_path / "absent.json") == {}


# ---- the `evaluate` stage with vLLM ---------------------------------------------------------------------------------
@pytest.mark.vllm
def test_evaluate_stage_with_vllm_writes_a_report_and_resumes(tmp_path, tiny_qwen3_dir, monkeypatch, capsys):
    from skill_distill.__main__ import main

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, sorted(os.sched_getaffinity(0)))))
    out = tmp_path / "eval"
    args = ["evaluate", "--config", "configs/pipeline/evaluate_quickstart.yaml", f"--model={tiny_qwen3_dir}",
            f"--output_dir={out}", "--sampling.max_new_tokens=8", "--sampling.temperature=0.6", "--sampling.seed=1",
            "--grading.confidence=0.9"]
    main(args)
    report = load_report(out / "report.json")
    s = report["summary"]["heldout"]
    assert report["benchmarks"]["heldout"]["metrics"]["confidence"] == 0.9  # the grading group reaches the intervals
    assert s["problems"] == 56 and s["samples"] == 56 and s["mean_tokens"] == 8.0 and s["truncation_rate"] == 1.0
    skills = report["benchmarks"]["heldout"]["metrics"]["skills"]
    assert sum(r["judged"] for r in skills if r["is_leaf"]) == 56 and len([r for r in skills if r["is_leaf"]]) == 14
    assert (out / "summary.png").is_file() and (out / "skills_heldout.png").is_file()
    records = (out / "records.jsonl").read_text()
    assert len(records.splitlines()) == 56
    # what the person sees: a progress line per chunk, then where the outputs went and the weakest skill
    shown = capsys.readouterr()
    assert "[evaluate] 56/56 requests generated and graded (56 in " in shown.err
    weakest = min((r for r in skills if r["is_leaf"] and r["judged"]), key=lambda r: (r["accuracy"], r["chain"]))
    assert (f"[evaluate] heldout: avg@1 = {100 * s['accuracy']:.1f}% [" in shown.out
            and f"; weakest skill: {weakest['chain']} {100 * weakest['accuracy']:.1f}% ({weakest['judged']} problems)"
            in shown.out)
    assert f"[evaluate] report: {out / 'report.json'}\n" in shown.out

    # a rerun finds every request recorded: no engine is started (the model path is not even read)
    main(args[:3] + ["--model=/nonexistent/model", f"--tokenizer={tiny_qwen3_dir}"] + args[4:])
    assert (out / "records.jsonl").read_text() == records
    assert load_report(out / "report.json")["summary"] == report["summary"]


def test_paper_evaluation_config_follows_method_section_7():
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "pipeline" / "evaluate_qwen3_4b_paper.yaml").read_text())
    assert cfg["sampling"]["temperature"] == 0.6 and cfg["sampling"]["top_p"] == 1.0
    assert cfg["sampling"]["max_new_tokens"] == 16384 and cfg["enable_thinking"] is True
    assert cfg["backend"]["class_path"] == "VLLMConfig"
    names = [b if isinstance(b, str) else b["name"] for b in cfg["benchmarks"]]
    assert set(names) == {"aime24", "aime25", "amc23", "math-l5", "olympiadbench", "math500"}


def test_history_chart_has_every_evaluation_of_a_run(scripted, loaded, tmp_path, monkeypatch):
    from skill_distill.skill_charts import plot_history, write_history

    records, _, _ = scripted
    report = build_report(loaded, records, compute_summaries(loaded, records), {"tag": "epoch=0", "epoch": 0})
    root = tmp_path / "eval"
    write_report(root / "epoch=0", report)
    assert write_history(root) == {}  # one evaluation: no history yet
    later = json.loads(json.dumps(report))
    later.update(tag="epoch=1", epoch=1)
    for row in later["benchmarks"]["heldout"]["metrics"]["skills"]:
        row["accuracy"] = 1.0
    baseline = json.loads(json.dumps(report))
    baseline.update(tag="baseline", epoch=None)
    write_report(root / "epoch=1", later)
    write_report(root / "baseline", baseline)
    paths = write_history(root)
    assert paths == {"history/heldout": str(root / "history_heldout.png")}  # aime24 has no skills
    png = Path(paths["history/heldout"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the columns are the evaluations in run order (baseline first), whatever the order they are given in
    import matplotlib.figure

    drawn = {}
    original = matplotlib.figure.Figure.savefig

    def capture(fig, *args, **kwargs):
        ax = fig.axes[0]
        drawn["columns"] = [t.get_text() for t in ax.get_xticklabels()]
        drawn["cells"] = ax.images[0].get_array()
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", capture)
    assert plot_history([baseline, report, later], "heldout", tmp_path / "h.png")
    assert drawn["columns"] == ["baseline", "epoch=0", "epoch=1"]
    assert (drawn["cells"][:, 2] == 100).all()  # epoch=1 at 1.0 in every skill


def test_a_set_of_one_problem_is_summarised_per_skill(tree):
    """torchmetrics' compute() squeezes a one-element state to a scalar; a held-out set of one problem (``limit:
    1``) must still be summarised, with its skill rows (it raised IndexError before)."""
    one = load_benchmarks([BenchmarkSpec("heldout", path=str(QS / "heldout.jsonl"), limit=1, k=2,
                                         skills=SkillSource(attribution=str(QS / "attribution.jsonl")))], tree)
    problem = one[0].problems[0]
    records = [{"benchmark": "heldout", "index": 0, "id": problem.id, "correct": correct, "num_tokens": 5,
                "finished": True, "skills_written": None} for correct in (True, False)]
    s = compute_summaries(one, records)["heldout"]
    assert (s["problems"], s["samples"], s["correct_samples"], s["accuracy"]) == (1, 2, 1, 0.5)
    leaf = "->".join(one[0].chains[problem.id][0])
    assert {row["chain"]: row["accuracy"] for row in s["skills"]}[leaf] == 0.5
