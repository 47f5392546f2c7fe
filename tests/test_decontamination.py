"""Decontamination against the real benchmark rows (the mirror's files, loaded by name)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from skill_distill.decontamination import (
    WORD,
    BenchmarkIndex,
    DecontaminationConfig,
    normalise,
    run_decontaminate,
)
from skill_distill.eval_sets import load_benchmark
from skill_distill.io import ConfigError, read_json, read_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def benchmark_mirror(shared_dir, monkeypatch):
    """Registered benchmarks resolve to the mirror's copies of the pinned files."""
    assert shared_dir.is_dir()  # the registered sets resolve through the SKILL_DISTILL_DATA mirror


def respaced_recased(text: str) -> str:
    return "  " + "\n ".join(w.upper() if k % 2 else w for k, w in enumerate(text.split(" "))) + "\t"


def one_number_changed(text: str) -> str:
    m = next(m for m in re.finditer(r"\d+", text))
    return text[: m.start()] + str(int(m.group()) + 1) + text[m.end():]


def test_normalise_folds_case_space_dollars_and_thin_spaces():
    assert normalise("Find  $x$ such\\ that\n X=\uff11,\u00a0 1\\,000") == "find x suchthat x=1, 1000"


def test_normalise_drops_latex_sizing_delimiters_and_frac_variants():
    """Issue 26 part 4: ``\\left(`` / ``\\right)`` added the words "left" and "right" to the normalised text."""
    plain = normalise("Evaluate $(\\frac{1}{2})^3 + [x]$.")
    assert plain == "evaluate (\\frac{1}{2})^3 + [x]."
    for styled in ["Evaluate $\\left(\\dfrac{1}{2}\\right)^3 + \\bigl[x\\bigr]$.",
                   "Evaluate \\(\\Big(\\tfrac{1}{2}\\Big)^3 +\\! \\left[x\\right]\\).",
                   "EVALUATE $\\displaystyle \\left( \\frac{1}{2} \\right)^3\\;+ [x]$."]:
        assert WORD.findall(normalise(styled)) == WORD.findall(plain), styled
    assert "left" not in normalise("$\\left(x\\right)$") and "\\leftarrow" in normalise("$\\leftarrow$")


def test_exact_and_ngram_rules_on_real_rows(tmp_path, benchmark_mirror):
    math500 = load_benchmark("math500").problems
    aime = load_benchmark("aime24").problems
    long_math = next(p for p in math500 if len(WORD.findall(normalise(p.problem))) >= 16
                     and re.search(r"\d", p.problem))
    long_aime = next(p for p in aime if len(WORD.findall(normalise(p.problem))) >= 16)
    pool = [
        {"id": "verbatim", "problem": math500[0].problem},
        {"id": "respaced", "problem": respaced_recased(math500[3].problem)},
        {"id": "aime-recased", "problem": aime[1].problem.upper()},
        {"id": "aime-number", "problem": one_number_changed(long_aime.problem)},
        {"id": "math-number", "problem": one_number_changed(long_math.problem)},
        *read_jsonl(REPO / "data" / "quickstart" / "pool.jsonl")[:40],
    ]
    src = tmp_path / "pool.jsonl"
    write_jsonl(src, pool)
    summary = run_decontaminate(str(src), str(tmp_path / "clean" / "pool.jsonl"))
    hits = read_jsonl(tmp_path / "clean" / "decontamination_hits.jsonl")
    by_id: dict[str, dict[str, dict]] = {}
    for h in hits:
        by_id.setdefault(h["id"], {})[h["benchmark"]] = h
    assert set(by_id) == {"verbatim", "respaced", "aime-recased", "aime-number", "math-number"}
    assert by_id["verbatim"]["math500"] == {"id": "verbatim", "benchmark": "math500",
                                            "problem_id": math500[0].id, "rule": "exact",
                                            "ngram": normalise(math500[0].problem), "score": None}
    assert by_id["respaced"]["math500"]["rule"] == "exact"
    assert by_id["aime-recased"]["aime24"]["rule"] == "exact"
    assert by_id["aime-recased"]["aime24"]["problem_id"] == aime[1].id
    for pid, bench, target in [("aime-number", "aime24", long_aime), ("math-number", "math500", long_math)]:
        hit = by_id[pid][bench]
        assert hit["rule"] == "similar" and hit["problem_id"] == target.id
        assert DecontaminationConfig().similarity <= hit["score"] < 1.0 and hit["ngram"] is None
    kept = read_jsonl(tmp_path / "clean" / "pool.jsonl")
    assert [r["id"] for r in kept] == [r["id"] for r in pool[5:]]  # the synthetic rows, in order
    counts = read_json(tmp_path / "clean" / "decontamination.json")
    assert counts["removed"] == summary["removed"] == 5 and counts["checked"] == len(pool)
    assert counts["hits_by_rule"]["similar"] >= 2 and counts["hits_by_benchmark"]["math500"] >= 3
    assert counts["hits_by_rule"]["ngram"] == 0  # off by default
    assert set(counts["benchmarks"]) == {"aime24", "aime25", "amc23", "math500", "math-l5", "olympiadbench"}


CRAFTED = [("b", "short", "If $2^8=4^x$, what is the value of $x$?"),
           ("b", "pairs", "Find the number of ordered pairs of positive integers $(a,b)$ such that $a+b=1000$ and "
                          "neither $a$ nor $b$ has a zero digit."),
           ("b", "bug", "A bug starts at a vertex of a regular tetrahedron and each minute moves along an edge chosen "
                        "at random. The probability that it is back at its start after seven minutes is "
                        "$\\frac{m}{n}$, where $m$ and $n$ are relatively prime positive integers. Find $m+n$."),
           ("b", "coins", "Ten coins are tossed. The probability that no two consecutive coins show heads is "
                          "$\\frac{m}{n}$, where $m$ and $n$ are relatively prime positive integers. Find $m+n$."),
           ("b", "long", "Twelve friends sit around a round table. Each one flips a fair coin, and everyone whose coin "
                         "shows heads stands up. What is the probability that no two adjacent friends stand?")]
CLEAN = ("Find the number of ordered pairs of positive integers $(x,y)$ with $x<y$ whose least common multiple is "
         "$720$; call it $N$. Two of these pairs are drawn at random, and the probability that they share a first "
         "entry is $\\tfrac{m}{n}$, where $m$ and $n$ are relatively prime positive integers. Find $m+n$.")


def test_short_edited_copies_are_caught_and_stock_phrases_are_not():
    """Issue 26 part 4 on crafted rows: a short problem with one number changed (every 8-word run holds the edit)
    is caught; a clean problem sharing two stock phrases with benchmark problems is not; a benchmark problem
    inside a longer text is caught by containment."""
    index = BenchmarkIndex(CRAFTED)
    hit, = index.hits("If $2^{10} = 4^x$, what is the value of $x$?")
    assert (hit["problem_id"], hit["rule"]) == ("short", "similar")
    assert index.hits("IF  $2^8=4^x$,\n what is the value of  $x$?")[0]["rule"] == "exact"
    assert not index.hits(CLEAN)
    # the rule before issue 26 (any shared 8-gram) flags it; discounting the n-grams found in several benchmark
    # problems drops the AIME ending (in "bug" and "coins") but not "the number of ordered pairs of positive
    # integers", found in one benchmark problem only: why the n-gram rule is off by default
    old = BenchmarkIndex(CRAFTED, DecontaminationConfig(max_problems_per_ngram=10**6, similarity=2, containment=2))
    assert {h["problem_id"] for h in old.hits(CLEAN)} == {"pairs"}  # first in text order
    discounted = BenchmarkIndex(CRAFTED, DecontaminationConfig(max_problems_per_ngram=1, similarity=2,
                                                               containment=2))
    hit, = discounted.hits(CLEAN)
    assert (hit["problem_id"], hit["ngram"]) == ("pairs", "find the number of ordered pairs of positive")
    assert not discounted.hits("It is $\\frac{m}{n}$, where $m$ and $n$ are relatively prime positive integers. "
                               "Find $m+n$.")
    embedded = ("This warm-up set mixes counting, algebra and geometry; show every step, check small cases first, "
                f"and state each assumption you make. {CRAFTED[4][2]} Then solve the same question for eleven "
                "friends, and explain why the two answers differ by the amount they do.")
    assert index.hits(embedded)[0]["problem_id"] == "long"
    hit, = BenchmarkIndex(CRAFTED, DecontaminationConfig(similarity=2)).hits(embedded)  # containment alone
    assert (hit["problem_id"], hit["rule"], hit["score"]) == ("long", "contained", 1.0)
    assert not BenchmarkIndex(CRAFTED, DecontaminationConfig(similarity=2, containment=2)).hits(embedded)
    with pytest.raises(ConfigError, match="decontamination.similarity"):
        DecontaminationConfig(similarity=0)


def test_shipped_synthetic_corpus_has_no_hit(tmp_path, benchmark_mirror):
    summary = run_decontaminate(str(REPO / "data" / "quickstart" / "pool.jsonl"), str(tmp_path / "pool.jsonl"))
    assert summary["checked"] == 560 and summary["removed"] == 0
    assert (tmp_path / "pool.jsonl").read_bytes() == (REPO / "data" / "quickstart" / "pool.jsonl").read_bytes()
    assert read_jsonl(tmp_path / "decontamination_hits.jsonl") == []


def test_pool_stage_drops_benchmark_problems_before_the_draw(tmp_path, benchmark_mirror):
    from skill_distill.corpus import CorpusFields
    from skill_distill.pool import PoolDraw, PoolSource, run_pool

    amc = load_benchmark("amc23").problems[0]
    rows = read_jsonl(REPO / "data" / "quickstart" / "pool.jsonl")[:30]
    rows.insert(7, {"id": "leak", "problem": amc.problem, "trace": "<think>x</think> \\boxed{1}", "answer": "1"})
    rows.insert(9, {"id": "leak-2", "problem": amc.problem.lower(), "trace": "<think>y</think> \\boxed{1}",
                    "answer": "1"})
    src = tmp_path / "src.jsonl"
    write_jsonl(src, rows)
    stats = run_pool(PoolSource(str(src), fields=CorpusFields()), str(tmp_path / "out"), PoolDraw(size=25, heldout=4),
                     decontamination=DecontaminationConfig(benchmarks=["amc23", "aime25"]))
    out = tmp_path / "out"
    kept = {r["id"] for r in read_jsonl(out / "pool.jsonl") + read_jsonl(out / "heldout.jsonl")}
    assert "leak" not in kept and "leak-2" not in kept and len(kept) == 29
    assert stats["dropped"]["benchmark_overlap"] == 2  # both traces of the one problem
    assert stats["decontamination"]["removed"] == 1 and stats["decontamination"]["hits_by_benchmark"] == {"amc23": 1}
    hits = read_jsonl(tmp_path / "out" / "decontamination_hits.jsonl")
    assert [(h["id"], h["benchmark"], h["problem_id"], h["rule"]) for h in hits] == [("leak", "amc23", amc.id, "exact")]
    assert read_json(tmp_path / "out" / "decontamination.json")["removed"] == 1


@pytest.mark.slow
def test_decontaminate_cli_bad_input_exits_2(tmp_path, benchmark_mirror):
    env_cmd = [sys.executable, "-m", "skill_distill", "decontaminate", "--pool", str(tmp_path / "missing.jsonl"),
               "--output", str(tmp_path / "out.jsonl")]
    done = subprocess.run(env_cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert done.returncode == 2 and "missing.jsonl" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    (tmp_path / "pool.jsonl").write_text(json.dumps({"id": "1", "problem": "x"}) + "\n")
    done = subprocess.run([sys.executable, "-m", "skill_distill", "decontaminate", "--pool", "pool.jsonl",
                           "--output", "clean.jsonl", "--decontamination.benchmarks", '["nope"]'],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    assert done.returncode == 2 and "unknown benchmark 'nope'" in done.stderr
