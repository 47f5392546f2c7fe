"""The synthetic skill-structured math data: correct worked solutions, true labels, determinism, the shipped files.

Answers are checked three independent ways: math-verify (the trace's box equals the answer field), a solver that
reads only the problem text, and a check that every arithmetic statement written in a trace is true.
"""

from __future__ import annotations

import json
import math
import random
import re
from fractions import Fraction
from pathlib import Path

import pytest
import sympy

from skill_distill.formatting import render_prompt, user_message
from skill_distill.io import DataError, read_json, read_jsonl
from skill_distill.skill_tree import SkillTree
from skill_distill.synthetic import (
    PRESETS,
    generate_leaf,
    generate_problem,
    leaf_chains,
    make_dataset,
    run_make_data,
    synthetic_tree,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "quickstart"
FILES = ["tree.json", "pool.jsonl", "heldout.jsonl", "attribution.jsonl", "metadata.json"]


@pytest.fixture(scope="module")
def quickstart():
    return make_dataset("quickstart", seed=0)


def _samples(difficulties=(2, 3), per_leaf=15):
    """Problems beyond the quickstart level, so the harder settings are checked too."""
    rng = random.Random(7)
    return [generate_problem(c, rng, d) for d in difficulties for c in leaf_chains() for _ in range(per_leaf)]


def test_tree_is_two_levels_with_the_generated_leaves():
    tree = synthetic_tree()
    assert tree.name == "Mathematics" and tree.depth == 2
    assert tree.topics() == ["Arithmetic", "Number Theory", "Algebra", "Fractions and Percentages"]
    assert 8 <= len(tree.leaf_chains) <= 15
    assert tree.leaf_chains == leaf_chains()
    assert all(len(c) == 2 for c in tree.leaf_chains)


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_make_data(str(a), "quickstart", seed=3)
    run_make_data(str(b), "quickstart", seed=3)
    run_make_data(str(c), "quickstart", seed=4)
    for name in FILES[:-1]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert read_json(a / "metadata.json") | {"command": ""} == read_json(b / "metadata.json") | {"command": ""}
    assert (a / "pool.jsonl").read_bytes() != (c / "pool.jsonl").read_bytes()


def test_boxed_answer_of_every_trace_verifies_against_the_answer(quickstart):
    from math_verify import parse, verify

    examples = quickstart.pool + quickstart.heldout
    assert len(examples) == 700
    wrong_checked = 0
    for ex in examples:
        assert ex.trace.startswith("<think>\n") and ex.trace.count("\n</think>\n\n") == 1, ex.id
        assert ex.trace.count("\\boxed{") == 1 and ex.trace.endswith(f"The answer is \\boxed{{{ex.answer}}}."), ex.id
        assert ex.pass_rate is None
        gold = parse(f"\\boxed{{{ex.answer}}}")
        pred = parse(ex.trace)
        assert gold and pred and verify(gold, pred), (ex.id, ex.answer, ex.trace[-60:])
        if ex.answer.lstrip("-").isdigit() and wrong_checked < 50:  # the check is not vacuous
            assert not verify(parse(f"\\boxed{{{int(ex.answer) + 1}}}"), pred)
            wrong_checked += 1
    assert wrong_checked == 50


# ---- an independent solver: reads only the problem text --------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", text)]


def _sympy(text: str):
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    return parse_expr(text, transformations=standard_transformations + (implicit_multiplication_application,
                                                                        convert_xor))


def _solve(leaf: str, problem: str):
    n = _ints(problem)
    if leaf in ("single-digit addition", "multi-digit addition"):
        return sum(n)
    if leaf == "subtraction":
        return max(n) - min(n)
    if leaf == "multiplication":
        return math.prod(n)
    if leaf == "division with remainder":
        return n[0] % n[1] if ("remainder" in problem or "left over" in problem) else n[0] // n[1]
    if leaf == "greatest common divisor":
        return math.gcd(*n)
    if leaf == "least common multiple":
        return math.lcm(*n)
    if leaf == "modular arithmetic":
        base, exp, mod = (int(x) for x in re.search(r"(\d+)\^(\d+)\D+?(\d+)", problem).groups())
        return pow(base, exp, mod)
    if leaf == "counting divisors":
        return sympy.divisor_count(n[0])
    if leaf.endswith("linear equations"):
        eq = re.search(r"(?::|if|satisfies) (.+ = -?\d+)[.?]$", problem).group(1)
        lhs, rhs = eq.split(" = ")
        (sol,) = sympy.solve(sympy.Eq(_sympy(lhs), _sympy(rhs)))
        return sol
    if leaf == "evaluating expressions":
        m = (re.match(r"Evaluate (.+) when (\w) = (-?\d+)\.$", problem)
             or re.match(r"Find the value of (.+) at (\w) = (-?\d+)\.$", problem))
        if m:
            expr, var, value = m.groups()
        else:
            var, value, expr = re.match(r"If (\w) = (-?\d+), what is the value of (.+)\?$", problem).groups()
        return _sympy(expr).subs(sympy.Symbol(var), int(value))
    if leaf == "fraction addition":
        return sum(Fraction(int(a), int(b)) for a, b in re.findall(r"(\d+)/(\d+)", problem))
    if leaf == "percentages":
        if "off" in problem:
            whole, p = n
            return Fraction(whole * (100 - p), 100)
        if "what percent" in problem.lower():
            part, whole = (n[1], n[0]) if problem.startswith("What percent") else n
            return Fraction(part * 100, whole)
        p, whole = n
        return Fraction(p * whole, 100)
    raise AssertionError(f"no solver for {leaf}")


def _answer_value(answer: str):
    m = re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", answer)
    return Fraction(int(m.group(1)), int(m.group(2))) if m else int(answer)


def test_answers_match_a_solver_that_reads_only_the_problem(quickstart):
    rows = [(quickstart.chains[e.id][0][1], e.problem, e.answer) for e in quickstart.pool + quickstart.heldout]
    rows += [(p.chain[1], p.problem, p.answer) for p in _samples()]
    solved = {leaf: 0 for _, leaf in leaf_chains()}
    for leaf, problem, answer in rows:
        expected = _solve(leaf, problem)
        assert Fraction(int(sympy.numer(expected)), int(sympy.denom(expected))) == _answer_value(answer), \
            (leaf, problem, answer, expected)
        solved[leaf] += 1
    assert min(solved.values()) >= 80


# ---- every arithmetic statement a trace writes is true ----------------------------------------------------
_NUM = r"(?:\(-\d+\)|\d+(?:\.\d+)?(?:/\d+)?)(?:\^\d+)?"
_EXPR = rf"-?{_NUM}(?: [-+×÷] {_NUM})*"
# a chain "E = E = ..." of pure-number expressions, not glued to a variable, an exponent or an operator
_STATEMENT = re.compile(rf"(?<![\w.^/(])(?<![-+×÷^/]\s)({_EXPR}(?: = {_EXPR})+)(?![\w^/(]|\.\d)")


def _value(expr: str) -> Fraction:
    """Exact value of a pure-number expression (every literal becomes a Fraction, so ÷ and / stay exact)."""
    python = re.sub(r"\d+(?:\.\d+)?", lambda m: f"F('{m.group(0)}')", expr)
    python = python.replace("×", "*").replace("÷", "/").replace("^", "**")
    return eval(python, {"__builtins__": {}, "F": Fraction})  # noqa: S307 - input is matched by _STATEMENT


def _false_statements(trace: str) -> tuple[int, list[str]]:
    found = [m.group(1) for m in _STATEMENT.finditer(trace)]
    return len(found), [s for s in found if len({_value(part) for part in s.split(" = ")}) != 1]


def test_every_arithmetic_step_written_in_a_trace_is_true(quickstart):
    checked = {leaf: 0 for _, leaf in leaf_chains()}
    items = [(quickstart.chains[e.id][0][1], e.trace) for e in quickstart.pool + quickstart.heldout]
    items += [(p.chain[1], p.trace) for p in _samples()]
    for leaf, trace in items:
        n, false = _false_statements(trace)
        assert not false, (leaf, false, trace)
        checked[leaf] += n
    assert min(checked.values()) >= 50, checked  # every skill's reasoning is actually inspected
    # and the checker catches a wrong step
    n, false = _false_statements("<think>\nOnes: 7 + 5 = 12, carry 1.\nTens: 4 + 8 + 1 = 14.\n</think>")
    assert n == 2 and false == ["4 + 8 + 1 = 14"]


def test_written_files_have_valid_labels_disjoint_ids_and_unique_problems(tmp_path):
    meta = run_make_data(str(tmp_path), "quickstart", seed=0)
    tree = SkillTree.load(tmp_path / "tree.json")
    assert tree.to_dict() == synthetic_tree().to_dict()
    pool, held = read_jsonl(tmp_path / "pool.jsonl"), read_jsonl(tmp_path / "heldout.jsonl")
    attribution = read_jsonl(tmp_path / "attribution.jsonl")
    assert all(set(r) == {"id", "problem", "trace", "answer", "pass_rate"} for r in pool + held)
    pool_ids, held_ids = {r["id"] for r in pool}, {r["id"] for r in held}
    assert len(pool_ids) == len(pool) == 560 and len(held_ids) == len(held) == 140
    assert not pool_ids & held_ids
    assert all(re.fullmatch(r"qs-\d{6}", i) for i in pool_ids | held_ids)
    assert len({r["problem"] for r in pool + held}) == 700
    assert [r["id"] for r in attribution] == [r["id"] for r in pool + held]
    per_leaf: dict[str, dict[str, int]] = {}
    for row in attribution:
        assert len(row["chains"]) == 1
        chain = tree.validate_chain(row["chains"][0], f"attribution {row['id']}")
        split = "pool" if row["id"] in pool_ids else "heldout"
        counts = per_leaf.setdefault("->".join(chain), {"pool": 0, "heldout": 0})
        counts[split] += 1
    assert per_leaf == meta["counts"] == read_json(tmp_path / "metadata.json")["counts"]
    assert all(v == {"pool": 40, "heldout": 10} for v in per_leaf.values())


def test_heldout_problems_never_enter_a_pool_of_another_seed_or_preset():
    spec = PRESETS["evidence"]
    for chain in leaf_chains():
        pool0, held0 = generate_leaf(chain, spec.pool_per_leaf, spec.heldout_per_leaf, seed=0)
        pool1, held1 = generate_leaf(chain, 40, 10, seed=1)
        held_keys = {p.key for p in held0 + held1}
        assert not held_keys & {p.key for p in pool0 + pool1}, chain
        assert len({p.key for p in pool0}) == spec.pool_per_leaf
        assert len({p.problem for p in held0 + pool0}) == spec.pool_per_leaf + spec.heldout_per_leaf


def test_quickstart_examples_are_short_in_qwen3_tokens(quickstart, qwen_tokenizer):
    examples = quickstart.pool + quickstart.heldout
    traces = [len(qwen_tokenizer(e.trace)["input_ids"]) for e in examples]
    # the whole training example: chat-templated prompt plus the assistant trace
    prompts = qwen_tokenizer([render_prompt(qwen_tokenizer, user_message(e.problem)) for e in examples])["input_ids"]
    whole = [len(p) + t for p, t in zip(prompts, traces, strict=True)]
    assert min(traces) >= 40 and max(traces) <= 140, (min(traces), max(traces))
    assert 60 <= sum(traces) / len(traces) <= 120
    assert max(whole) <= 200, max(whole)


def test_shipped_quickstart_equals_a_fresh_regeneration(tmp_path):
    meta = read_json(SHIPPED / "metadata.json")
    run_make_data(str(tmp_path), meta["preset"], meta["seed"], meta["pool_per_leaf"], meta["heldout_per_leaf"],
                  meta["difficulty"])
    for name in FILES[:-1]:
        assert (SHIPPED / name).read_bytes() == (tmp_path / name).read_bytes(), name
    fresh = read_json(tmp_path / "metadata.json")
    assert meta.pop("command").startswith("python -m skill_distill make-data --output_dir data/quickstart ")
    fresh.pop("command")
    assert meta == fresh
    assert sum(f.stat().st_size for f in SHIPPED.iterdir()) < 1_000_000


@pytest.mark.parametrize("config", ["make_data_quickstart.yaml", "make_data_evidence.yaml"])
def test_shipped_configs_run_through_the_cli(config, tmp_path):
    from skill_distill.__main__ import main

    out = tmp_path / "out"
    main(["make-data", "--config", str(REPO / "configs" / "pipeline" / config), "--output_dir", str(out),
          "--pool_per_leaf", "3", "--heldout_per_leaf", "1"])
    meta = read_json(out / "metadata.json")
    assert meta["preset"] == config.split("_")[-1].removesuffix(".yaml")
    assert meta["totals"] == {"pool": 42, "heldout": 14, "leaves": 14}
    assert len(read_jsonl(out / "pool.jsonl")) == 42


def test_user_errors_are_one_line(tmp_path, capsys):
    from skill_distill.__main__ import main

    with pytest.raises(DataError, match="unknown preset 'big'"):
        make_dataset("big")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="difficulty must be between 1 and 3"):
        make_dataset("quickstart", difficulty=4)
    with pytest.raises(DataError, match=r"'Arithmetic->single-digit addition' has too few distinct problems"):
        generate_leaf(("Arithmetic", "single-digit addition"), 1000, 10)
    with pytest.raises(SystemExit) as exit_info:
        main(["make-data", "--output_dir", str(tmp_path), "--pool_per_leaf", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: pool_per_leaf must be >= 1") and "\n" not in err
    assert not (tmp_path / "metadata.json").exists()
    json.dumps(make_dataset("quickstart", pool_per_leaf=1, heldout_per_leaf=0).metadata)  # plain JSON


def test_leaf_difficulty_sets_one_leaf_and_leaves_level_one_unchanged():
    base = make_dataset("quickstart", pool_per_leaf=6, heldout_per_leaf=2)
    same = make_dataset("quickstart", pool_per_leaf=6, heldout_per_leaf=2, leaf_difficulty={"percentages": 1})
    assert [e.to_row() for e in same.pool] == [e.to_row() for e in base.pool]
    easy = make_dataset("quickstart", pool_per_leaf=6, heldout_per_leaf=2,
                        leaf_difficulty={"Fractions and Percentages->fraction addition": 0})
    assert easy.metadata["leaf_difficulty"] == {"Fractions and Percentages->fraction addition": 0}
    changed = {e.id for e, f in zip(easy.pool, base.pool, strict=True) if e.to_row() != f.to_row()}
    fraction_ids = {i for i, c in easy.chains.items() if c[0][-1] == "fraction addition"}
    assert changed and changed <= fraction_ids | {e.id for e in base.pool if base.chains[e.id][0][-1]
                                                  == "fraction addition"}
    # the easy level draws like or multiple denominators only: the answer's denominator is the larger one's divisor
    for e in easy.pool:
        if e.id in fraction_ids:
            (b, d) = [int(t.split("/")[1].rstrip("?.,")) for t in e.problem.split() if "/" in t][:2]
            assert max(b, d) % min(b, d) == 0, e.problem


def test_an_easy_level_a_leaf_does_not_have_is_one_line():
    with pytest.raises(DataError, match=r"'Arithmetic->subtraction' has no level 0; level 0 exists for"):
        make_dataset("quickstart", leaf_difficulty={"subtraction": 0})
    with pytest.raises(DataError, match="unknown leaf 'lcm'"):
        make_dataset("quickstart", leaf_difficulty={"lcm": 0})


# ---- composed problems (regime P of the third evidence round) ------------------------------------------------
def test_order_free_key_makes_reordered_sums_one_problem():
    from skill_distill.synthetic import order_free_key

    assert order_free_key("9+6+3") == order_free_key("3+6+9") == "3+6+9"
    assert order_free_key("12*7") == order_free_key("7*12")
    assert order_free_key("9-6") == "9-6" and order_free_key("3,9") == "3,9"  # not commutative: unchanged
    chain = ("Arithmetic", "single-digit addition")
    # the twin problem of round 2: with keys as written, reordered sums are split between pool and held-out ...
    pool, held = generate_leaf(chain, 150, 40, seed=0)
    twins = {order_free_key(p.key) for p in pool} & {order_free_key(p.key) for p in held}
    assert twins
    # ... with order-free keys, never
    pool, held = generate_leaf(chain, 150, 40, seed=0, order_free=True)
    assert not {p.key for p in pool} & {p.key for p in held}
    assert len({p.key for p in pool + held}) == 190
    assert make_dataset("quickstart", order_free_keys=True).metadata["order_free_keys"] is True


@pytest.fixture(scope="module")
def composed():
    from skill_distill.composed import make_composed_dataset

    return make_composed_dataset(seed=0, pool_size=1200, heldout_per_leaf=20)


def test_composed_problems_chain_two_or_three_leaves_of_at_least_24(composed):
    from skill_distill.composed import composed_tree

    tree = composed_tree()
    assert len(tree.leaf_chains) >= 24 and tree.depth == 2 and len(tree.topics()) == 5
    rows = composed.pool + composed.heldout
    steps = [len(composed.chains[e.id]) for e in rows]
    assert set(steps) == {2, 3}
    assert all(len(set(composed.chains[e.id])) == len(composed.chains[e.id]) for e in rows)  # distinct leaves
    assert {c for e in rows for c in composed.chains[e.id]} == set(tree.leaf_chains)
    # a later step reads the previous one's result, and the trace names every step's result
    for e in rows[:200]:
        n = len(composed.chains[e.id])
        assert e.problem.count("Let ") == n and ("Let B be" in e.problem)
        assert all(f"So {letter} = " in e.trace for letter in "ABC"[:n])
        assert e.trace.endswith(f"The answer is \\boxed{{{e.answer}}}.")
        last = re.search(rf"So {'ABC'[n - 1]} = (-?\d+)\.", e.trace).group(1)
        assert last == e.answer


def test_composed_traces_use_several_phrasings_per_leaf_and_every_written_step_is_true(composed):
    from skill_distill.composed import LEAVES, Reject, Step

    rng = random.Random(3)
    for spec in LEAVES:
        shapes = set()
        for _ in range(400):  # a step's working with its numbers masked: the phrasing
            try:
                step: Step = spec.step(rng, spec.start(rng), "A")
            except Reject:  # this input does not fit the step; draw again
                continue
            shapes.add(re.sub(r"\d+", "#", step.working))
        assert len(shapes) >= 3, (spec.chain, shapes)
    checked = 0
    for e in composed.pool + composed.heldout:
        n, false = _false_statements(e.trace)
        assert not false, (false, e.trace)
        checked += n
    assert checked > 2 * len(composed.pool)


def test_composed_heldout_covers_every_leaf_and_never_shares_a_problem_with_the_pool(tmp_path):
    from skill_distill.composed import generate_composed, run_make_composed_data

    pool, held = generate_composed(600, 12, seed=1)
    assert len(pool) == 600
    assert not {p.key for p in pool} & {p.key for p in held}
    counts: dict = {}
    for p in held:
        for c in p.chains:
            counts[c] = counts.get(c, 0) + 1
    assert len(counts) >= 24 and min(counts.values()) >= 12
    meta = run_make_composed_data(str(tmp_path / "a"), seed=1, pool_size=600, heldout_per_leaf=12)
    run_make_composed_data(str(tmp_path / "b"), seed=1, pool_size=600, heldout_per_leaf=12)
    for name in FILES[:-1]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    attribution = read_jsonl(tmp_path / "a" / "attribution.jsonl")
    assert all(2 <= len(r["chains"]) <= 3 for r in attribution)
    assert meta["totals"]["pool"] == 600 and meta["command"].startswith("python -m skill_distill make-composed-data")
    tree = SkillTree.load(tmp_path / "a" / "tree.json")
    assert all(tree.validate_chain(c, r["id"]) for r in attribution for c in r["chains"])
