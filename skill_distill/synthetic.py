"""Offline, skill-structured math data: procedural problems with computed, verified worked solutions.

There is no model or dataset hub on the development machines, so the quickstart and the CPU experiments
need a pool that looks like the paper's (a teacher trace per problem, a checkable answer, skill labels) and
can be rebuilt from code. This module provides it:

- a two-level skill tree (root ``Mathematics`` -> 4 topics -> 14 leaf skills) whose leaves differ in how hard
  they are for a small student (single-digit addition is easy, gcd of 3-digit numbers is hard);
- one generator per leaf that draws a problem, *computes* the answer and writes a short worked solution in
  the DeepSeek-R1 layout ``<think>\\n...\\n</think>\\n\\n... The answer is \\boxed{X}.``;
- ``run_make_data``: the ``make-data`` stage writing the canonical files ``tree.json``, ``pool.jsonl``,
  ``heldout.jsonl``, ``attribution.jsonl`` (the generator's true chains) and ``metadata.json``.

Everything is deterministic given ``seed``. Problems are unique by content (the numbers, not the wording),
and whether a problem may be held out depends on its content alone (a hash), so no seed or preset ever puts
a held-out problem of another run into a pool. ``difficulty`` (1-3) widens every skill's numbers; at the
default 1 the smallest skills (multiplication, single-digit addition) have about 576 pool-eligible and 144
held-out-eligible distinct problems, enough for the ``evidence`` preset (400 + 50 per skill).
``leaf_difficulty`` sets a level per leaf; level 0 (an easier variant: like or multiple denominators, small
operands, linear expressions, round percentages) exists for the leaves in ``EASY_LEAVES``, where a small student
is at zero. Level 1 output is byte-identical to what this module wrote before levels per leaf existed.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from skill_distill.corpus import Example
from skill_distill.io import DataError, write_json, write_jsonl
from skill_distill.skill_tree import Chain, SkillTree, format_chain

GENERATOR_VERSION = "1"
"""Bumped whenever a generator changes its output for a given seed."""

MIN_DIFFICULTY, MAX_DIFFICULTY = 1, 3
EASY_LEVEL = 0
EASY_LEAVES = ("evaluating expressions", "fraction addition", "percentages", "least common multiple")
"""Leaves with a level-0 variant (``leaf_difficulty``); they hold a small student at zero accuracy at level 1."""
HELDOUT_SHARE = 5
"""A problem may be held out only when the hash of its content is 0 modulo this (about 1 in 5 problems)."""

MAX_STALE_DRAWS = 5_000
"""Rejection sampling gives up after this many draws in a row without a new problem (the leaf is exhausted)."""

Preset = Literal["quickstart", "evidence"]


@dataclass(frozen=True)
class PresetSpec:
    id_prefix: str
    pool_per_leaf: int
    heldout_per_leaf: int


PRESETS: dict[str, PresetSpec] = {
    # a few hundred short examples: fine-tuning SmolLM2-135M on CPU takes minutes
    "quickstart": PresetSpec("qs", pool_per_leaf=40, heldout_per_leaf=10),
    # thousands of examples: enough per leaf for a profile, a selection and a per-skill held-out score
    "evidence": PresetSpec("ev", pool_per_leaf=400, heldout_per_leaf=50),
}


@dataclass(frozen=True)
class SyntheticProblem:
    """One generated problem with its worked solution."""

    chain: Chain
    key: str
    """Content identity (operands and question, not the wording): two problems with one key are duplicates."""
    problem: str
    trace: str
    answer: str


@dataclass(frozen=True)
class _Draft:
    key: str
    problem: str
    thinking: str
    solution: str
    answer: str


LeafGenerator = Callable[[random.Random, int], _Draft]
_GENERATORS: dict[Chain, LeafGenerator] = {}


def _leaf(topic: str, leaf: str) -> Callable[[LeafGenerator], LeafGenerator]:
    def register(fn: LeafGenerator) -> LeafGenerator:
        _GENERATORS[(topic, leaf)] = fn
        return fn

    return register


def synthetic_tree() -> SkillTree:
    """The two-level tree the generators cover, in a fixed order (topics, then leaves as registered)."""
    topics: dict[str, list[str]] = {}
    for topic, leaf in _GENERATORS:
        topics.setdefault(topic, []).append(leaf)
    tree = {"name": "Mathematics",
            "children": [{"name": t, "children": [{"name": leaf} for leaf in leaves]} for t, leaves in topics.items()]}
    return SkillTree.from_dict(tree, source="skill_distill.synthetic")


def leaf_chains() -> list[Chain]:
    return list(_GENERATORS)


def render_trace(thinking: str, solution: str, answer: str) -> str:
    """The DeepSeek-R1 layout: reasoning inside ``<think>``, then a short written solution ending in the box."""
    return f"<think>\n{thinking}\n</think>\n\n{solution} The answer is \\boxed{{{answer}}}."


def order_free_key(key: str) -> str:
    """A content key with the operands of a sum or product in sorted order (``9+6+3`` -> ``3+6+9``), so a
    reordered twin of a problem is the same problem. Keys of other shapes are returned unchanged."""
    for op in "+*":
        parts = key.split(op)
        if len(parts) > 1 and all(p.lstrip("-").isdigit() for p in parts):
            return op.join(sorted(parts, key=int))
    return key


def generate_problem(chain: Chain, rng: random.Random, difficulty: int = 1) -> SyntheticProblem:
    """Draw one problem of leaf ``chain`` at ``difficulty`` (1 = the quickstart level, up to 3)."""
    if tuple(chain) not in _GENERATORS:
        raise DataError(f"no generator for skill chain {format_chain(chain)!r}; "
                        f"choose one of {', '.join(format_chain(c) for c in _GENERATORS)}")
    _check_difficulty(difficulty, tuple(chain))
    d = _GENERATORS[tuple(chain)](rng, difficulty)
    return SyntheticProblem(tuple(chain), d.key, d.problem, render_trace(d.thinking, d.solution, d.answer), d.answer)


def heldout_eligible(chain: Chain, key: str) -> bool:
    """Whether a problem may go to the held-out split: a hash of its content, independent of seed and preset."""
    digest = hashlib.sha256(f"{format_chain(chain)}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % HELDOUT_SHARE == 0


def generate_leaf(chain: Chain, n_pool: int, n_heldout: int, seed: int = 0, difficulty: int = 1,
                  order_free: bool = False) -> tuple[list[SyntheticProblem], list[SyntheticProblem]]:
    """Draw ``n_pool`` pool and ``n_heldout`` held-out problems of one leaf, all distinct by content.

    Deterministic in (seed, difficulty, chain). ``order_free``: content is compared (and held-out eligibility
    hashed) by ``order_free_key``, so a reordered sum is the same problem (off by default: the shipped data keep
    their bytes). Raises DataError if the leaf has too few distinct problems at this difficulty.
    """
    rng = random.Random(f"synthetic-v{GENERATOR_VERSION}:{seed}:{difficulty}:{format_chain(chain)}")
    pool: list[SyntheticProblem] = []
    held: list[SyntheticProblem] = []
    seen: set[str] = set()
    stale = 0  # draws since the last accepted problem: a long run means the leaf is exhausted
    while (len(pool) < n_pool or len(held) < n_heldout) and stale < MAX_STALE_DRAWS:
        p = generate_problem(chain, rng, difficulty)
        if order_free:
            p = replace(p, key=order_free_key(p.key))
        target, want = (held, n_heldout) if heldout_eligible(chain, p.key) else (pool, n_pool)
        if p.key in seen or len(target) >= want:
            stale += 1
            continue
        seen.add(p.key)
        target.append(p)
        stale = 0
    if len(pool) < n_pool or len(held) < n_heldout:
        raise DataError(f"skill {format_chain(chain)!r} has too few distinct problems at difficulty {difficulty} "
                        f"for {n_pool} pool + {n_heldout} held-out (found {len(pool)} + {len(held)}); "
                        "lower pool_per_leaf/heldout_per_leaf or raise difficulty")
    return pool, held


@dataclass
class SyntheticData:
    """A generated data set in memory: what ``run_make_data`` writes."""

    tree: SkillTree
    pool: list[Example]
    heldout: list[Example]
    chains: dict[str, list[Chain]]
    """id -> the generator's true chains (one per problem), for pool and held-out ids."""
    metadata: dict


def resolve_leaf_difficulty(tree: SkillTree, difficulty: int, leaf_difficulty: dict[str, int] | None
                            ) -> dict[Chain, int]:
    """Every leaf's level: ``difficulty``, or its entry in ``leaf_difficulty`` (keyed by leaf name or by
    ``Topic->leaf``). Raises DataError for an unknown leaf or a level that leaf does not have."""
    _check_difficulty(difficulty)
    levels = {c: difficulty for c in tree.leaf_chains}
    by_name = {c[-1]: c for c in tree.leaf_chains} | {format_chain(c): c for c in tree.leaf_chains}
    for name, level in (leaf_difficulty or {}).items():
        if name not in by_name:
            raise DataError(f"leaf_difficulty names unknown leaf {name!r}; "
                            f"choose among {', '.join(c[-1] for c in tree.leaf_chains)}")
        _check_difficulty(level, by_name[name])
        levels[by_name[name]] = level
    return levels


def make_dataset(preset: Preset = "quickstart", seed: int = 0, pool_per_leaf: int | None = None,
                 heldout_per_leaf: int | None = None, difficulty: int = 1,
                 leaf_difficulty: dict[str, int] | None = None, order_free_keys: bool = False) -> SyntheticData:
    """Generate every leaf, shuffle each split with ``seed`` and number the ids ``<prefix>-000000`` onwards
    (pool first, then held-out, so the two id sets are disjoint). Raises DataError for bad arguments."""
    if preset not in PRESETS:
        raise DataError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    n_pool = spec.pool_per_leaf if pool_per_leaf is None else pool_per_leaf
    n_held = spec.heldout_per_leaf if heldout_per_leaf is None else heldout_per_leaf
    if n_pool < 1 or n_held < 0:
        raise DataError(f"pool_per_leaf must be >= 1 and heldout_per_leaf >= 0 (got {n_pool}, {n_held})")
    tree = synthetic_tree()
    levels = resolve_leaf_difficulty(tree, difficulty, leaf_difficulty)
    pool_problems: list[SyntheticProblem] = []
    held_problems: list[SyntheticProblem] = []
    counts: dict[str, dict[str, int]] = {}
    for chain in tree.leaf_chains:
        p, h = generate_leaf(chain, n_pool, n_held, seed, levels[chain], order_free_keys)
        pool_problems += p
        held_problems += h
        counts[format_chain(chain)] = {"pool": len(p), "heldout": len(h)}
    order = random.Random(f"synthetic-order:{seed}")
    order.shuffle(pool_problems)
    order.shuffle(held_problems)
    pool, heldout, chains = [], [], {}
    for i, prob in enumerate(pool_problems + held_problems):
        ex = Example(id=f"{spec.id_prefix}-{i:06d}", problem=prob.problem, trace=prob.trace, answer=prob.answer)
        (pool if i < len(pool_problems) else heldout).append(ex)
        chains[ex.id] = [prob.chain]
    metadata = {
        "generator": "skill_distill.synthetic",
        "generator_version": GENERATOR_VERSION,
        "preset": preset,
        "seed": seed,
        "difficulty": difficulty,
        # only when given, so level-1 metadata stays byte-identical to before
        **({"leaf_difficulty": {format_chain(c): v for c, v in levels.items() if v != difficulty}}
           if leaf_difficulty else {}),
        **({"order_free_keys": True} if order_free_keys else {}),
        "pool_per_leaf": n_pool,
        "heldout_per_leaf": n_held,
        "totals": {"pool": len(pool), "heldout": len(heldout), "leaves": len(tree.leaf_chains)},
        "counts": counts,
        "heldout_rule": f"a problem is held-out eligible iff sha256(chain|content key) % {HELDOUT_SHARE} == 0",
    }
    return SyntheticData(tree, pool, heldout, chains, metadata)


def run_make_data(output_dir: str, preset: Preset = "quickstart", seed: int = 0, pool_per_leaf: int | None = None,
                  heldout_per_leaf: int | None = None, difficulty: int = 1,
                  leaf_difficulty: dict[str, int] | None = None, order_free_keys: bool = False) -> dict:
    """Generate a skill-tagged synthetic math corpus with verified worked solutions.

    Writes (atomically) into ``output_dir``: ``tree.json`` (the skill tree), ``pool.jsonl`` and
    ``heldout.jsonl`` (canonical rows ``{"id","problem","trace","answer","pass_rate": null}``),
    ``attribution.jsonl`` (``{"id","chains"}``: the true chains of every pool and held-out id) and
    ``metadata.json`` (generator version, arguments, counts per leaf, the command that regenerates it).
    Returns the metadata. Raises DataError for an unknown preset, bad counts or difficulty.

    Args:
        output_dir: Directory to write into (created if missing; other files in it are left alone).
        preset: ``quickstart`` (40 pool + 10 held-out per leaf, ids ``qs-...``) or ``evidence``
            (400 + 50 per leaf, ids ``ev-...``).
        seed: Seed of every random draw; the same seed gives byte-identical files.
        pool_per_leaf: Pool problems per leaf skill (None: the preset's).
        heldout_per_leaf: Held-out problems per leaf skill (None: the preset's).
        difficulty: 1 (default, the quickstart level) to 3; larger numbers of digits and wider ranges.
        leaf_difficulty: Level per leaf, overriding ``difficulty`` (keys: leaf name or ``Topic->leaf``); level 0,
            an easier variant, exists for the leaves in ``EASY_LEAVES``.
        order_free_keys: Compare problems (and decide held-out eligibility) with operand order ignored, so
            ``9 + 6 + 3`` and ``3 + 6 + 9`` are one problem and never split between pool and held-out.
    """
    data = make_dataset(preset, seed, pool_per_leaf, heldout_per_leaf, difficulty, leaf_difficulty, order_free_keys)
    meta = data.metadata
    meta["command"] = ("python -m skill_distill make-data "
                       f"--output_dir {shlex.quote(str(output_dir))} --preset {preset} --seed {seed} "
                       f"--difficulty {difficulty} "
                       + (f"--leaf_difficulty {shlex.quote(json.dumps(leaf_difficulty))} " if leaf_difficulty else "")
                       + ("--order_free_keys true " if order_free_keys else "")
                       + f"--pool_per_leaf {meta['pool_per_leaf']} --heldout_per_leaf {meta['heldout_per_leaf']}")
    return write_dataset(output_dir, data)


def write_dataset(output_dir: str, data: SyntheticData) -> dict:
    """Write a generated data set's canonical files (atomically, metadata last) and return its metadata."""
    out = Path(output_dir)
    meta = dict(data.metadata)
    meta["files"] = ["tree.json", "pool.jsonl", "heldout.jsonl", "attribution.jsonl", "metadata.json"]
    write_json(out / "tree.json", data.tree.to_dict())
    write_jsonl(out / "pool.jsonl", (e.to_row() for e in data.pool))
    write_jsonl(out / "heldout.jsonl", (e.to_row() for e in data.heldout))
    write_jsonl(out / "attribution.jsonl",
                ({"id": e.id, "chains": [list(c) for c in data.chains[e.id]]} for e in data.pool + data.heldout))
    write_json(out / "metadata.json", meta)  # last: its presence marks a complete output
    print(f"make-data: {meta['totals']['pool']} pool + {meta['totals']['heldout']} held-out problems over "
          f"{meta['totals']['leaves']} skills -> {out}")
    return meta


def _check_difficulty(difficulty: int, chain: Chain | None = None) -> None:
    if chain is not None and difficulty == EASY_LEVEL:
        if chain[-1] not in EASY_LEAVES:
            raise DataError(f"leaf {format_chain(chain)!r} has no level {EASY_LEVEL}; "
                            f"level {EASY_LEVEL} exists for {', '.join(EASY_LEAVES)}")
        return
    if not MIN_DIFFICULTY <= difficulty <= MAX_DIFFICULTY:
        raise DataError(f"difficulty must be between {MIN_DIFFICULTY} and {MAX_DIFFICULTY}, got {difficulty}")


# ---- formatting helpers -----------------------------------------------------------------------------------
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jamal", "Kai", "Lena", "Mateo",
         "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara"]
ITEMS = ["apples", "marbles", "stickers", "pencils", "shells", "coins", "cards", "stamps", "beads", "cookies"]
PLACES = ["ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands", "millions"]
VARIABLES = ["x", "y", "n", "t", "a", "k"]


def _digits(n: int) -> list[int]:
    """Decimal digits of a non-negative integer, ones first."""
    return [int(c) for c in reversed(str(n))]


def _rand_digits(rng: random.Random, n_digits: int) -> int:
    return rng.randint(10 ** (n_digits - 1), 10**n_digits - 1)


def _paren(v: int) -> str:
    """A number as a factor inside an expression: negatives in parentheses."""
    return f"({v})" if v < 0 else str(v)


def _signed_sum(values: list[int]) -> str:
    """``[12, -8, 5]`` -> ``12 - 8 + 5``."""
    text = str(values[0])
    for v in values[1:]:
        text += f" - {-v}" if v < 0 else f" + {v}"
    return text


def _factorize(n: int) -> list[tuple[int, int]]:
    out, p = [], 2
    while p * p <= n:
        if n % p == 0:
            e = 0
            while n % p == 0:
                n //= p
                e += 1
            out.append((p, e))
        p += 1
    if n > 1:
        out.append((n, 1))
    return out


def _power_product(factors: list[tuple[int, int]]) -> str:
    return " × ".join(f"{p}^{e}" if e > 1 else str(p) for p, e in factors)


def _factor_text(n: int) -> str:
    factors = _factorize(n)
    return f"{n} is prime" if factors == [(n, 1)] else f"{n} = {_power_product(factors)}"


def _frac_tex(num: int, den: int) -> str:
    return str(num) if den == 1 else f"\\frac{{{num}}}{{{den}}}"


# ---- Arithmetic -------------------------------------------------------------------------------------------
@_leaf("Arithmetic", "single-digit addition")
def _single_digit_addition(rng: random.Random, difficulty: int) -> _Draft:
    k = 2 if rng.random() < 0.5 else rng.randint(3, 2 + difficulty)
    nums = [rng.randint(1, 9) for _ in range(k)]
    total = sum(nums)
    expr = " + ".join(map(str, nums))
    if k == 2 and rng.random() < 0.4:
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        problem = f"{name} has {nums[0]} {item} and gets {nums[1]} more. How many {item} does {name} have now?"
    else:
        problem = rng.choice([f"What is {expr}?", f"Compute {expr}.", f"Find the sum {expr}."])
    if k == 2:
        a, b = nums
        steps = ", ".join(str(a + i) for i in range(1, b + 1))
        thinking = f"I need {a} + {b}.\n{a} + {b} = {total}.\nCheck by counting up {b} from {a}: {steps}. Yes."
    else:
        lines, running = [], nums[0]
        for v in nums[1:]:
            lines.append(f"{running} + {v} = {running + v}")
            running += v
        rest = sum(nums[1:])
        thinking = ("Add from left to right.\n" + "\n".join(lines)
                    + f"\nCheck: {' + '.join(map(str, nums[1:]))} = {rest}, and {nums[0]} + {rest} = {total}.")
    return _Draft("+".join(map(str, nums)), problem, thinking, f"{expr} = {total}.", str(total))


@_leaf("Arithmetic", "multi-digit addition")
def _multi_digit_addition(rng: random.Random, difficulty: int) -> _Draft:
    a = _rand_digits(rng, difficulty + 2)
    b = _rand_digits(rng, rng.choice([difficulty + 1, difficulty + 2]))
    if rng.random() < 0.5:
        a, b = b, a
    total = a + b
    da, db = _digits(a), _digits(b)
    lines, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = da[i] if i < len(da) else 0
        y = db[i] if i < len(db) else 0
        s = x + y + carry
        terms = " + ".join(map(str, [x, y] + ([carry] if carry else [])))
        lines.append(f"{PLACES[i].capitalize()}: {terms} = {s}" + (", carry 1." if s >= 10 else "."))
        carry = s // 10
    if carry:
        lines.append(f"{PLACES[len(lines)].capitalize()}: the carry 1.")
    problem = rng.choice([f"What is {a} + {b}?", f"Find the sum of {a} and {b}.",
                          f"A library has {a} novels and {b} comics. How many books is that in total?"])
    thinking = ("Add column by column, right to left.\n" + "\n".join(lines)
                + f"\nCheck: {total} - {b} = {a}.")
    return _Draft(f"{a}+{b}", problem, thinking, f"{a} + {b} = {total}.", str(total))


@_leaf("Arithmetic", "subtraction")
def _subtraction(rng: random.Random, difficulty: int) -> _Draft:
    a = _rand_digits(rng, difficulty + 1)
    b_digits = rng.randint(1, difficulty + 1)
    lo, hi = (2 if b_digits == 1 else 10 ** (b_digits - 1)), min(a - 1, 10**b_digits - 1)
    b = rng.randint(2, hi) if lo > hi else rng.randint(lo, hi)
    diff = a - b
    da, db = _digits(a), _digits(b)
    lines, borrow = [], 0
    for i, x in enumerate(da):
        y = db[i] if i < len(db) else 0
        v = x - y - borrow
        pay = " - 1" if borrow else ""  # the 1 lent to the column on the right
        if v < 0:
            lines.append(f"{PLACES[i].capitalize()}: {x} - {y}{pay} < 0, borrow: {x + 10} - {y}{pay} = {v + 10}.")
        else:
            lines.append(f"{PLACES[i].capitalize()}: {x} - {y}{pay} = {v}.")
        borrow = int(v < 0)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    problem = rng.choice([f"What is {a} - {b}?", f"Subtract {b} from {a}.",
                          f"{name} had {a} {item} and gave away {b}. How many {item} are left?"])
    thinking = ("Subtract column by column, right to left.\n" + "\n".join(lines)
                + f"\nSo {a} - {b} = {diff}. Check: {diff} + {b} = {a}.")
    return _Draft(f"{a}-{b}", problem, thinking, f"{a} - {b} = {diff}.", str(diff))


@_leaf("Arithmetic", "multiplication")
def _multiplication(rng: random.Random, difficulty: int) -> _Draft:
    a = _rand_digits(rng, difficulty + 1)
    b = rng.randint(2, 9) if difficulty == 1 else _rand_digits(rng, difficulty)
    product = a * b
    split, other = (a, b) if difficulty == 1 else (b, a)  # level 1: split the 2-digit factor by place value
    parts = [d * 10**i for i, d in enumerate(_digits(split)) if d][::-1]
    partials = " and ".join(f"{p} × {other} = {p * other}" for p in parts)
    total = f"\n{' + '.join(str(p * other) for p in parts)} = {product}." if len(parts) > 1 else ""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    problem = rng.choice([f"What is {a} × {b}?", f"Compute the product of {a} and {b}.",
                          f"{name} buys {b} bags with {a} {item} in each. How many {item} is that?"])
    thinking = (f"Split {split} by place value: {split} = {' + '.join(map(str, parts))}.\n{partials}.{total}\n"
                f"Check: {product} ÷ {b} = {a}.")
    return _Draft(f"{a}*{b}", problem, thinking, f"{a} × {b} = {product}.", str(product))


@_leaf("Arithmetic", "division with remainder")
def _division_with_remainder(rng: random.Random, difficulty: int) -> _Draft:
    d = rng.randint(3, 9) if difficulty == 1 else rng.randint(3, 10**difficulty - 1)
    while True:
        n = rng.randint(max(20, 2 * d), (500 if difficulty == 1 else 10 ** (difficulty + 2)) - 1)
        if n % d:
            break
    q, r = divmod(n, d)
    ask = rng.choice(["quotient", "remainder"])
    item = rng.choice(["eggs", "books", "cupcakes", "bottles", "tiles"])
    if ask == "quotient":
        problem = rng.choice([f"{n} {item} are packed into boxes of {d}. How many boxes can be filled completely?",
                              f"What is the whole-number quotient when {n} is divided by {d}?"])
    else:
        problem = rng.choice([f"{n} {item} are packed into boxes of {d}. How many {item} are left over?",
                              f"What is the remainder when {n} is divided by {d}?"])
    thinking = (f"{d} × {q} = {d * q}, and {d} × {q + 1} = {d * (q + 1)} is more than {n}.\n"
                f"So {n} = {d} × {q} + {r}: quotient {q}, remainder {r}.\nThe question asks for the {ask}.")
    answer = q if ask == "quotient" else r
    return _Draft(f"{n}/{d}:{ask}", problem, thinking, f"{n} = {d} × {q} + {r}, so the {ask} is {answer}.",
                  str(answer))


# ---- Number Theory -----------------------------------------------------------------------------------------
MAX_EUCLID_STEPS = 4
"""Longer Euclidean runs are redrawn: they would push the trace past the quickstart's length budget."""


@_leaf("Number Theory", "greatest common divisor")
def _gcd(rng: random.Random, difficulty: int) -> _Draft:
    lo, hi = 10 ** (difficulty + 1), 10 ** (difficulty + 2) - 1
    while True:
        g = rng.randint(2, 60) if rng.random() < 0.8 else 1
        a, b = rng.randint(lo // g + 1, hi // g) * g, rng.randint(lo // g + 1, hi // g) * g
        a, b = max(a, b), min(a, b)
        lines, x, y = [], a, b
        while y:
            lines.append(f"{x} = {x // y} × {y} + {x % y}")
            x, y = y, x % y
        if a != b and len(lines) <= MAX_EUCLID_STEPS:
            break
    g = x
    problem = rng.choice([f"What is the greatest common divisor of {a} and {b}?", f"Find gcd({a}, {b}).",
                          f"What is the largest whole number that divides both {a} and {b}?"])
    thinking = ("Euclidean algorithm:\n" + "\n".join(lines)
                + f"\nThe last nonzero remainder is {g}. Check: {a} ÷ {g} = {a // g}, {b} ÷ {g} = {b // g}.")
    return _Draft(f"{a},{b}", problem, thinking, f"gcd({a}, {b}) = {g}.", str(g))


@_leaf("Number Theory", "least common multiple")
def _lcm(rng: random.Random, difficulty: int) -> _Draft:
    hi = 60 * difficulty if difficulty else 36  # level 0: operands up to 36
    while True:
        a, b = rng.randint(4, hi), rng.randint(4, hi)
        if a != b and a % b and b % a:  # not a multiple of the other: the factor comparison has work to do
            break
    result = math.lcm(a, b)
    fa, fb = dict(_factorize(a)), dict(_factorize(b))
    best = [(p, max(fa.get(p, 0), fb.get(p, 0))) for p in sorted(set(fa) | set(fb))]
    powers = " × ".join(str(p**e) for p, e in best) + " = " if any(e > 1 for _, e in best) else ""
    problem = rng.choice([f"What is the least common multiple of {a} and {b}?", f"Find lcm({a}, {b}).",
                          f"What is the smallest positive number that is a multiple of both {a} and {b}?"])
    thinking = (f"Factor: {_factor_text(a)} and {_factor_text(b)}.\n"
                f"Highest power of each prime: {_power_product(best)} = {powers}{result}.\n"
                f"Check: {result} = {a} × {result // a} = {b} × {result // b}.")
    return _Draft(f"{min(a, b)},{max(a, b)}", problem, thinking, f"lcm({a}, {b}) = {result}.", str(result))


@_leaf("Number Theory", "modular arithmetic")
def _modular_power(rng: random.Random, difficulty: int) -> _Draft:
    while True:
        m = rng.randint(3, 5 + 5 * difficulty)
        a = rng.randint(2, 20 * difficulty)
        if math.gcd(a, m) == 1 and a % m != 1:  # a pure cycle of length > 1
            break
    n = rng.randint(10, 10 ** (difficulty + 1) - 1)
    r = a % m
    cycle = [r]
    while cycle[-1] != 1:
        cycle.append(cycle[-1] * r % m)
    p = len(cycle)
    q, t = divmod(n, p)
    k = t if t else p
    answer = pow(a, n, m)
    assert cycle[k - 1] == answer, (a, n, m)  # the written cycle argument must give the true remainder
    reduce = f"{a} = {a // m} × {m} + {r}, so {a} ≡ {r} (mod {m}).\n" if a >= m else ""
    thinking = (reduce + f"Powers of {r} mod {m}: {', '.join(map(str, cycle))}, then it repeats every {p}.\n"
                f"{n} = {q} × {p} + {t}, so {a}^{n} ≡ {r}^{k} ≡ {answer} (mod {m}).")
    problem = rng.choice([f"What is the remainder when {a}^{n} is divided by {m}?", f"Find {a}^{n} mod {m}."])
    return _Draft(f"{a}^{n}%{m}", problem, thinking, f"{a}^{n} ≡ {answer} (mod {m}).", str(answer))


@_leaf("Number Theory", "counting divisors")
def _count_divisors(rng: random.Random, difficulty: int) -> _Draft:
    n = rng.randint(10, 10 ** (difficulty + 2) - 1)
    factors = _factorize(n)
    count = math.prod(e + 1 for _, e in factors)
    problem = rng.choice([f"How many positive divisors does {n} have?",
                          f"Find the number of positive integer divisors of {n}."])
    if factors == [(n, 1)]:
        tried = [p for p in range(2, math.isqrt(n) + 1) if all(p % q for q in range(2, p))]
        thinking = (f"Try the primes up to √{n}: {', '.join(map(str, tried))}. None divides {n}, so it is prime.\n"
                    f"A prime has two divisors: 1 and {n}.")
        solution = f"{n} is prime, so it has 2 divisors."
    else:
        check = f"Check: {' × '.join(str(p**e) for p, e in factors)} = {n}.\n" if len(factors) > 1 else ""
        counting = (" × ".join(str(e + 1) for _, e in factors) if len(factors) > 1 else f"{factors[0][1]} + 1")
        thinking = (f"Factor: {n} = {_power_product(factors)}.\n{check}"
                    f"Each exponent can be 0 up to its power, so the count is {counting} = {count}.")
        solution = f"{n} = {_power_product(factors)} has {count} divisors."
    return _Draft(str(n), problem, thinking, solution, str(count))


# ---- Algebra -----------------------------------------------------------------------------------------------
@_leaf("Algebra", "one-step linear equations")
def _one_step_equation(rng: random.Random, difficulty: int) -> _Draft:
    v = rng.choice(VARIABLES)
    hi = 10 ** (difficulty + 1) - 1
    lo = 1 if difficulty == 1 else -hi  # negative solutions from level 2
    form = rng.choice(["add", "sub", "mul", "div"])
    if form in ("add", "sub"):
        x, b = rng.randint(lo, hi), rng.randint(2, hi)
        if form == "sub" and difficulty == 1:
            x = b + rng.randint(1, hi)  # keep the right side positive at level 1
        if form == "add":
            c = x + b
            eq, step = f"{v} + {b} = {c}", f"Subtract {b} from both sides: {v} = {c} - {b} = {x}."
            check = f"{_paren(x)} + {b} = {c}"
        else:
            c = x - b
            eq, step = f"{v} - {b} = {c}", f"Add {b} to both sides: {v} = {_paren(c)} + {b} = {x}."
            check = f"{_paren(x)} - {b} = {c}"
    else:
        a = rng.randint(2, 9 * difficulty)
        x = rng.randint(1 if difficulty == 1 else -12 * difficulty, 12 * difficulty) or 1
        if form == "mul":
            c = a * x
            eq, step = f"{a}{v} = {c}", f"Divide both sides by {a}: {v} = {_paren(c)} ÷ {a} = {x}."
            check = f"{a} × {_paren(x)} = {c}"
        else:
            c, x = x, a * x
            eq, step = f"{v}/{a} = {c}", f"Multiply both sides by {a}: {v} = {_paren(c)} × {a} = {x}."
            check = f"{_paren(x)} ÷ {a} = {c}"
    problem = rng.choice([f"Solve for {v}: {eq}.", f"Find {v} if {eq}.", f"What value of {v} satisfies {eq}?"])
    thinking = f"Isolate {v} in {eq}.\n{step}\nCheck: {check}."
    return _Draft(f"{form}:{eq.replace(v, 'x')}", problem, thinking, f"{v} = {x}.", str(x))


@_leaf("Algebra", "two-step linear equations")
def _two_step_equation(rng: random.Random, difficulty: int) -> _Draft:
    v = rng.choice(VARIABLES)
    if difficulty == 1:
        a, x, b = rng.randint(2, 9), rng.randint(1, 20), rng.randint(1, 30)
        if rng.random() < 0.4:
            b = -rng.randint(1, min(30, a * x))  # a·x - b, still with a non-negative right side
    else:
        span = 10 * difficulty
        a = rng.choice([i for i in range(-9 * difficulty, 9 * difficulty + 1) if abs(i) >= 2])
        x, b = rng.randint(-span, span), rng.choice([i for i in range(-3 * span, 3 * span + 1) if i])
    c = a * x + b
    sign = "+" if b > 0 else "-"
    eq = f"{a}{v} {sign} {abs(b)} = {c}"
    undo = (f"Subtract {b} from both sides: {a}{v} = {c} - {b}" if b > 0
            else f"Add {-b} to both sides: {a}{v} = {_paren(c)} + {-b}")
    thinking = (f"{undo} = {a * x}.\n"
                f"Divide both sides by {a}: {v} = {_paren(a * x)} ÷ {_paren(a)} = {x}.\n"
                f"Check: {a} × {_paren(x)} {sign} {abs(b)} = {c}.")
    problem = rng.choice([f"Solve for {v}: {eq}.", f"Find {v} if {eq}.", f"What value of {v} satisfies {eq}?"])
    return _Draft(f"{a},{b},{c}", problem, thinking, f"{v} = {x}.", str(x))


@_leaf("Algebra", "evaluating expressions")
def _evaluate_expression(rng: random.Random, difficulty: int) -> _Draft:
    v = rng.choice(["x", "y", "t", "n"])
    if difficulty == EASY_LEVEL:  # a linear expression a·v + b at a small positive value
        a, b, x = rng.randint(2, 9), rng.choice([i for i in range(-9, 10) if i]), rng.randint(2, 9)
        expr = f"{a}{v} {'+' if b > 0 else '-'} {abs(b)}"
        result = a * x + b
        thinking = (f"Substitute {v} = {x}: {a} × {x} {'+' if b > 0 else '-'} {abs(b)} = {a * x} "
                    f"{'+' if b > 0 else '-'} {abs(b)} = {result}.")
        problem = rng.choice([f"Evaluate {expr} when {v} = {x}.", f"If {v} = {x}, what is the value of {expr}?",
                              f"Find the value of {expr} at {v} = {x}."])
        return _Draft(f"{a},{b}@{x}", problem, thinking, f"At {v} = {x}, {expr} = {result}.", str(result))
    span = 3 + 2 * difficulty
    a = rng.randint(1, 2 + difficulty) * (1 if difficulty == 1 or rng.random() < 0.7 else -1)
    b = rng.choice([i for i in range(-span - 4, span + 5) if i])
    c = rng.randint(-span - 4, span + 4)
    x = rng.choice([i for i in range(-span + 2, span + 2) if i not in (0, 1)])
    coeffs = [(a, 2), (b, 1)] + ([(c, 0)] if c else [])

    def term(coef: int, power: int, value: str, first: bool) -> str:
        """One term of the polynomial, with the variable (or its substituted value) for ``value``."""
        mag = abs(coef)
        base = {2: f"{value}^2", 1: value, 0: ""}[power]
        if power == 0:
            body = str(mag)
        elif value == v:  # symbolic: 3x^2, x
            body = f"{mag if mag != 1 else ''}{base}"
        else:  # substituted: 3 × 4^2, (-2)^2
            body = base if mag == 1 else f"{mag} × {base}"
        if first:
            return f"-{body}" if coef < 0 else body
        return f" {'-' if coef < 0 else '+'} {body}"

    expr = "".join(term(k, p, v, i == 0) for i, (k, p) in enumerate(coeffs))
    sub = "".join(term(k, p, _paren(x), i == 0) for i, (k, p) in enumerate(coeffs))
    values = [k * x**p for k, p in coeffs]
    result = sum(values)
    thinking = (f"Substitute {v} = {x}, with {v}^2 = {_paren(x)}^2 = {x * x}.\n"
                f"{sub} = {_signed_sum(values)} = {result}.")
    problem = rng.choice([f"Evaluate {expr} when {v} = {x}.", f"If {v} = {x}, what is the value of {expr}?",
                          f"Find the value of {expr} at {v} = {x}."])
    return _Draft(f"{a},{b},{c}@{x}", problem, thinking, f"At {v} = {x}, {expr} = {result}.", str(result))


# ---- Fractions and Percentages -----------------------------------------------------------------------------
@_leaf("Fractions and Percentages", "fraction addition")
def _fraction_addition(rng: random.Random, difficulty: int) -> _Draft:
    max_den = 12 * difficulty
    while True:
        if difficulty == EASY_LEVEL:  # like denominators, or one a multiple of the other: lcm is the larger
            b = rng.randint(2, 12)
            d = b * rng.choice([1, 1, 2, 3])
        else:
            b, d = rng.randint(2, max_den), rng.randint(2, max_den)
        a, c = rng.randint(1, b - 1), rng.randint(1, d - 1)
        if (b != d or difficulty == EASY_LEVEL) and math.gcd(a, b) == 1 and math.gcd(c, d) == 1:
            break
    den = math.lcm(b, d)
    a2, c2 = a * den // b, c * den // d
    num = a2 + c2
    g = math.gcd(num, den)
    simplify = f"Divide by {g}: {num}/{den} = {num // g}/{den // g}." if g > 1 else "Already in lowest terms."
    rewrites = " and ".join(f"{x}/{y} = {x * den // y}/{den}" for x, y in [(a, b), (c, d)] if y != den)
    rewrites = f"{rewrites}.\n" if rewrites else ""  # like denominators (level 0) need no rewrite
    thinking = (f"Common denominator: lcm({b}, {d}) = {den}.\n{rewrites}"
                f"{a2}/{den} + {c2}/{den} = {num}/{den}. {simplify}")
    problem = rng.choice([f"What is {a}/{b} + {c}/{d}? Give the answer as a fraction in lowest terms.",
                          f"Add {a}/{b} and {c}/{d}. Simplify your answer.",
                          f"Compute {a}/{b} + {c}/{d} in lowest terms."])
    (p1, q1), (p2, q2) = sorted([(a, b), (c, d)])
    return _Draft(f"{p1}/{q1}+{p2}/{q2}", problem, thinking, f"{a}/{b} + {c}/{d} = {num // g}/{den // g}.",
                  _frac_tex(num // g, den // g))


@_leaf("Fractions and Percentages", "percentages")
def _percentages(rng: random.Random, difficulty: int) -> _Draft:
    while True:
        if difficulty == EASY_LEVEL:  # round percentages of multiples of 20
            p, whole = rng.choice([10, 20, 25, 50]), rng.randint(2, 50) * 20
            break
        p = rng.randint(1, 19) * 5 if difficulty == 1 else rng.randint(1, 99)
        whole = rng.randint(2, 40 * difficulty) * (20 if difficulty == 1 else 10)
        if p * whole % 100 == 0:
            break
    part = p * whole // 100
    kind = rng.choice(["of", "what-percent", "discount"])
    if kind == "of":
        problem = rng.choice([f"What is {p}% of {whole}?", f"Find {p} percent of {whole}."])
        thinking = (f"{p}% of {whole} is {p}/100 × {whole} = {p * whole}/100 = {part}.\n"
                    f"Check: {part}/{whole} × 100 = {p}.")
        solution, answer = f"{p}% of {whole} is {part}.", part
    elif kind == "what-percent":
        problem = rng.choice([f"What percent of {whole} is {part}?", f"{part} is what percent of {whole}?"])
        thinking = (f"Percent = part ÷ whole × 100.\n{part}/{whole} × 100 = {part * 100}/{whole} = {p}.\n"
                    f"Check: {p}/100 × {whole} = {part}.")
        solution, answer = f"{part} is {p}% of {whole}.", p
    else:
        item = rng.choice(["jacket", "lamp", "bicycle", "backpack", "game"])
        problem = f"A {item} costs ${whole}. It is on sale for {p}% off. What is the sale price in dollars?"
        thinking = (f"Discount: {p}/100 × {whole} = {part}.\nSale price: {whole} - {part} = {whole - part}.\n"
                    f"Check: {100 - p}/100 × {whole} = {whole - part}.")
        solution, answer = f"The sale price is {whole} - {part} = {whole - part} dollars.", whole - part
    return _Draft(f"{kind}:{p}:{whole}", problem, thinking, solution, str(answer))
