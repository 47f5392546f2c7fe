"""Composed skill problems ("regime P"): every problem chains 2-3 leaf skills, so it carries several skill chains,
as the paper's pool does (several chains per example over many leaves).

The ``synthetic`` preset's problems have one leaf and one trace template each; a skill selection over them puts the
whole budget on a few leaves (issue 25). Here a problem is a short chain of *steps*: the first step starts from
fresh numbers, each later step reads the previous step's result (``Let A be the gcd of 84 and 36. Let B be A + 17.
What is B?``). Each of the 25 leaves has several phrasings of its question and of its worked step, drawn at random,
so a leaf is not one template. The answer is computed; the trace writes every step's working and the result.

Uniqueness is by content with operand order ignored (``order_free_key``), so ``9 + 6`` and ``6 + 9`` are one
problem and can never be split between the pool and the held-out set.
"""

from __future__ import annotations

import hashlib
import math
import random
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from skill_distill.corpus import Example
from skill_distill.io import DataError
from skill_distill.skill_tree import Chain, SkillTree, format_chain
from skill_distill.synthetic import SyntheticData, _factorize, order_free_key, render_trace, write_dataset

COMPOSED_VERSION = "1"
"""Bumped whenever a step generator changes its output for a given seed."""

LETTERS = "ABC"
MIN_STEPS, MAX_STEPS = 2, 3
MAX_VALUE = 5000
"""A composed problem whose intermediate value leaves [0, MAX_VALUE] is redrawn (a small student's range)."""
MAX_STALE_DRAWS = 20_000


class Reject(Exception):
    """A step cannot take this input (e.g. an exact division by a non-divisor); the problem is redrawn."""


@dataclass(frozen=True)
class Step:
    """One worked step: the question fragment, the working, the result and its content key."""

    question: str
    working: str
    value: int
    key: str


StepFn = Callable[[random.Random, int, str], Step]
"""(rng, input value, how the input is written: a number or the previous letter) -> the step."""


@dataclass(frozen=True)
class LeafSpec:
    chain: Chain
    start: Callable[[random.Random], int]
    """A fresh input when the leaf is the first step."""
    step: StepFn


LEAVES: list[LeafSpec] = []


def _leaf(topic: str, name: str, start: Callable[[random.Random], int]) -> Callable[[StepFn], StepFn]:
    def register(fn: StepFn) -> StepFn:
        LEAVES.append(LeafSpec((topic, name), start, fn))
        return fn

    return register


def _pick(rng: random.Random, options: list[str], **values) -> str:
    return rng.choice(options).format(**values)


def _check(v: int) -> int:
    if not 0 <= v <= MAX_VALUE:
        raise Reject
    return v


# ---- Arithmetic -----------------------------------------------------------------------------------------------
@_leaf("Arithmetic", "addition", lambda r: r.randint(12, 99))
def _add(rng, v, x):
    b = rng.randint(3, 99)
    out = v + b
    return Step(_pick(rng, ["{x} + {b}", "the sum of {x} and {b}", "{x} increased by {b}"], x=x, b=b),
                _pick(rng, ["{v} + {b} = {o}.", "Add {b} to {v}: {v} + {b} = {o}.",
                            "{v} + {b}: ones and tens, {v} + {b} = {o}."], v=v, b=b, o=out),
                _check(out), order_free_key(f"{v}+{b}"))


@_leaf("Arithmetic", "subtraction", lambda r: r.randint(40, 199))
def _sub(rng, v, x):
    if v < 4:
        raise Reject
    b = rng.randint(1, min(v - 1, 99))
    out = v - b
    return Step(_pick(rng, ["{x} - {b}", "{x} decreased by {b}", "the difference {x} minus {b}"], x=x, b=b),
                _pick(rng, ["{v} - {b} = {o}.", "Take {b} from {v}: {v} - {b} = {o}.",
                            "{v} - {b} = {o}, check: {o} + {b} = {v}."], v=v, b=b, o=out),
                out, f"{v}-{b}")


@_leaf("Arithmetic", "multiplication by one digit", lambda r: r.randint(12, 99))
def _mul(rng, v, x):
    d = rng.randint(2, 9)
    out = v * d
    return Step(_pick(rng, ["{x} × {d}", "{d} times {x}", "the product of {x} and {d}"], x=x, d=d),
                _pick(rng, ["{v} × {d} = {o}.", "{d} times {v} is {o}.",
                            "{v} × {d}: {t} × {d} = {tt} and {u} × {d} = {uu}, so {o}."],
                      v=v, d=d, o=out, t=v - v % 10, tt=(v - v % 10) * d, u=v % 10, uu=(v % 10) * d),
                _check(out), order_free_key(f"{v}*{d}"))


@_leaf("Arithmetic", "squaring", lambda r: r.randint(4, 40))
def _square(rng, v, x):
    if v > 70:
        raise Reject
    out = v * v
    return Step(_pick(rng, ["the square of {x}", "{x} squared", "{x} × {x}"], x=x),
                _pick(rng, ["{v}^2 = {v} × {v} = {o}.", "{v} squared is {o}.", "{v} × {v} = {o}."], v=v, o=out),
                _check(out), f"{v}^2")


@_leaf("Arithmetic", "whole-number quotient", lambda r: r.randint(30, 400))
def _quotient(rng, v, x):
    d = rng.randint(2, 12)
    if v < d:
        raise Reject
    q, r = divmod(v, d)
    return Step(_pick(rng, ["the whole-number quotient of {x} divided by {d}", "{x} ÷ {d}, rounded down",
                            "how many full groups of {d} fit in {x}"], x=x, d=d),
                _pick(rng, ["{v} = {d} × {q} + {r}, so the quotient is {q}.", "{d} × {q} = {dq} ≤ {v} < {dq1}, "
                            "so {q}.", "{v} ÷ {d} gives {q} remainder {r}; quotient {q}."],
                      v=v, d=d, q=q, r=r, dq=d * q, dq1=d * (q + 1)),
                q, f"{v}//{d}")


# ---- Number Theory --------------------------------------------------------------------------------------------
@_leaf("Number Theory", "greatest common divisor", lambda r: r.randint(2, 12) * r.randint(3, 15))
def _gcd(rng, v, x):
    if v < 2:
        raise Reject
    b = rng.randint(2, 12) * rng.randint(2, 15)
    if b == v:
        raise Reject
    g = math.gcd(v, b)
    lines, a, c = [], max(v, b), min(v, b)
    while c:
        lines.append(f"{a} = {a // c} × {c} + {a % c}")
        a, c = c, a % c
    if len(lines) > 4:
        raise Reject
    return Step(_pick(rng, ["the greatest common divisor of {x} and {b}", "gcd({x}, {b})",
                            "the largest number dividing both {x} and {b}"], x=x, b=b),
                _pick(rng, ["Euclid: {e}; gcd = {g}.", "{e}. The last nonzero remainder is {g}.",
                            "Divide repeatedly: {e}, so gcd({v}, {b}) = {g}."], e="; ".join(lines), g=g, v=v, b=b),
                g, ",".join(map(str, sorted((v, b)))) + ":gcd")


@_leaf("Number Theory", "least common multiple", lambda r: r.randint(4, 30))
def _lcm(rng, v, x):
    if not 2 <= v <= 60:
        raise Reject
    b = rng.randint(3, 15)
    out = math.lcm(v, b)
    g = math.gcd(v, b)
    return Step(_pick(rng, ["the least common multiple of {x} and {b}", "lcm({x}, {b})",
                            "the smallest positive multiple of both {x} and {b}"], x=x, b=b),
                _pick(rng, ["lcm = {v} × {b} ÷ gcd = {p} ÷ {g} = {o}.", "gcd({v}, {b}) = {g}, so lcm = {v} × {b} / "
                            "{g} = {o}.", "Multiples of {v} until one is divisible by {b}: {o}."],
                      v=v, b=b, p=v * b, g=g, o=out),
                _check(out), ",".join(map(str, sorted((v, b)))) + ":lcm")


@_leaf("Number Theory", "remainder", lambda r: r.randint(20, 300))
def _remainder(rng, v, x):
    m = rng.randint(3, 11)
    if v < m:
        raise Reject
    q, r = divmod(v, m)
    return Step(_pick(rng, ["the remainder of {x} divided by {m}", "{x} mod {m}",
                            "what is left when {x} is divided by {m}"], x=x, m=m),
                _pick(rng, ["{v} = {m} × {q} + {r}, remainder {r}.", "{m} × {q} = {mq}, {v} - {mq} = {r}.",
                            "{v} mod {m} is {r} (since {m} × {q} = {mq})."], v=v, m=m, q=q, r=r, mq=m * q),
                r, f"{v}%{m}")


@_leaf("Number Theory", "digit sum", lambda r: r.randint(100, 999))
def _digit_sum(rng, v, x):
    if v < 10:
        raise Reject
    digits = [int(c) for c in str(v)]
    out = sum(digits)
    return Step(_pick(rng, ["the sum of the digits of {x}", "the digit sum of {x}", "the total of {x}'s digits"],
                      x=x),
                _pick(rng, ["Digits of {v}: {d} = {o}.", "{d} = {o}.", "Add the digits of {v}: {d} = {o}."],
                      v=v, d=" + ".join(map(str, digits)), o=out),
                out, f"{v}:digits")


@_leaf("Number Theory", "counting divisors", lambda r: r.randint(12, 200))
def _divisors(rng, v, x):
    if not 2 <= v <= 1000:
        raise Reject
    factors = _factorize(v)
    out = math.prod(e + 1 for _, e in factors)
    power = " × ".join(f"{p}^{e}" if e > 1 else str(p) for p, e in factors)
    counts = " × ".join(str(e + 1) for _, e in factors)
    return Step(_pick(rng, ["the number of positive divisors of {x}", "how many divisors {x} has",
                            "the count of whole numbers that divide {x}"], x=x),
                _pick(rng, ["{v} = {f}, so ({c}) = {o} divisors.", "Factor {v} = {f}; exponents plus one multiply: "
                            "{c} = {o}.", "{v} = {f} gives {o} divisors."], v=v, f=power, c=counts, o=out),
                out, f"{v}:divisors")


@_leaf("Number Theory", "largest prime factor", lambda r: r.randint(20, 400))
def _largest_prime(rng, v, x):
    if not 2 <= v <= 2000:
        raise Reject
    factors = _factorize(v)
    out = factors[-1][0]
    power = " × ".join(f"{p}^{e}" if e > 1 else str(p) for p, e in factors)
    return Step(_pick(rng, ["the largest prime factor of {x}", "the biggest prime dividing {x}",
                            "the greatest prime in the factorization of {x}"], x=x),
                _pick(rng, ["{v} = {f}; largest prime {o}.", "Factor: {v} = {f}, so {o}.",
                            "The primes of {v} = {f}; the largest is {o}."], v=v, f=power, o=out),
                out, f"{v}:maxprime")


# ---- Algebra --------------------------------------------------------------------------------------------------
@_leaf("Algebra", "one-step equations", lambda r: r.randint(5, 90))
def _one_step(rng, v, x):
    b = rng.randint(2, 60)
    out = v + b
    return Step(_pick(rng, ["the solution y of y - {b} = {x}", "the y with y - {b} = {x}",
                            "the number that is {x} after {b} is taken away"], x=x, b=b),
                _pick(rng, ["y - {b} = {v}, so y = {v} + {b} = {o}.", "Add {b} to both sides: y = {o}.",
                            "y = {v} + {b} = {o}; check {o} - {b} = {v}."], v=v, b=b, o=out),
                _check(out), f"y-{b}={v}")


@_leaf("Algebra", "two-step equations", lambda r: r.randint(5, 200))
def _two_step(rng, v, x):
    a = rng.randint(2, 9)
    b = (-v) % a + a * rng.randint(0, 4)
    out = (v + b) // a
    return Step(_pick(rng, ["the solution z of {a}z - {b} = {x}", "the z with {a}z - {b} = {x}",
                            "z when {a} times z, minus {b}, equals {x}"], a=a, b=b, x=x),
                _pick(rng, ["{a}z = {v} + {b} = {s}, z = {s} ÷ {a} = {o}.", "Add {b}: {a}z = {s}. Divide by {a}: "
                            "z = {o}.", "{a}z - {b} = {v} gives {a}z = {s}, so z = {o}."], a=a, b=b, v=v, s=v + b,
                      o=out),
                out, f"{a}z-{b}={v}")


@_leaf("Algebra", "evaluating linear expressions", lambda r: r.randint(2, 40))
def _linear(rng, v, x):
    a, b = rng.randint(2, 9), rng.randint(1, 30)
    out = a * v + b
    return Step(_pick(rng, ["{a}n + {b} at n = {x}", "the value of {a}n + {b} when n = {x}",
                            "{a}n + {b} with n equal to {x}"], a=a, b=b, x=x),
                _pick(rng, ["{a} × {v} + {b} = {p} + {b} = {o}.", "Substitute n = {v}: {p} + {b} = {o}.",
                            "{a}n = {p} at n = {v}; plus {b} is {o}."], a=a, b=b, v=v, p=a * v, o=out),
                _check(out), f"{a}n+{b}@{v}")


@_leaf("Algebra", "arithmetic sequences", lambda r: r.randint(3, 30))
def _sequence(rng, v, x):
    if not 1 <= v <= 100:
        raise Reject
    s, d = rng.randint(1, 20), rng.randint(2, 9)
    out = s + (v - 1) * d
    return Step(_pick(rng, ["term number {x} of the sequence {s}, {s1}, {s2}, ...",
                            "the {x}-th term of the arithmetic sequence starting {s}, {s1}, {s2}",
                            "term {x} of {s}, {s1}, {s2}, ... (step {d})"], x=x, s=s, s1=s + d, s2=s + 2 * d, d=d),
                _pick(rng, ["Term {v}: {s} + ({v} - 1) × {d} = {s} + {k} = {o}.", "First term {s}, step {d}: "
                            "{s} + {vm} × {d} = {o}.", "a_n = {s} + (n - 1) × {d}; at n = {v}: {o}."],
                      v=v, s=s, d=d, vm=v - 1, k=(v - 1) * d, o=out),
                _check(out), f"{s},{d}@{v}")


# ---- Fractions and Percentages --------------------------------------------------------------------------------
@_leaf("Fractions and Percentages", "percent of", lambda r: r.randint(1, 40) * 20)
def _percent_of(rng, v, x):
    options = [p for p in (10, 20, 25, 50, 75, 5, 40, 60) if v * p % 100 == 0]
    if not options or v == 0:
        raise Reject
    p = rng.choice(options)
    out = v * p // 100
    return Step(_pick(rng, ["{p}% of {x}", "{p} percent of {x}", "the {p}% share of {x}"], p=p, x=x),
                _pick(rng, ["{p}% of {v}: {p} × {v} ÷ 100 = {o}.", "{v} ÷ 100 × {p} = {o}.",
                            "{p}/100 × {v} = {pv}/100 = {o}."], p=p, v=v, pv=p * v, o=out),
                out, f"{p}%{v}")


@_leaf("Fractions and Percentages", "percent increase", lambda r: r.randint(1, 30) * 20)
def _percent_up(rng, v, x):
    options = [p for p in (10, 20, 25, 50, 5) if v * p % 100 == 0]
    if not options or v == 0:
        raise Reject
    p = rng.choice(options)
    inc = v * p // 100
    out = v + inc
    return Step(_pick(rng, ["{x} increased by {p}%", "{x} after a {p}% rise", "{x} plus {p} percent of itself"],
                      x=x, p=p),
                _pick(rng, ["{p}% of {v} is {i}; {v} + {i} = {o}.", "Rise {v} × {p}/100 = {i}, total {o}.",
                            "{v} × {m}/100 = {o}."], p=p, v=v, i=inc, o=out, m=100 + p),
                _check(out), f"{v}+{p}%")


@_leaf("Fractions and Percentages", "fraction of a number", lambda r: r.randint(2, 20) * 12)
def _fraction_of(rng, v, x):
    options = [(a, b) for b in (2, 3, 4, 5, 6, 8) for a in range(1, b) if v % b == 0 and math.gcd(a, b) == 1]
    if not options or v == 0:
        raise Reject
    a, b = rng.choice(options)
    out = v // b * a
    return Step(_pick(rng, ["{a}/{b} of {x}", "{a} {b}ths of {x}" if b > 3 else "{a}/{b} of {x}",
                            "the fraction {a}/{b} of {x}"], a=a, b=b, x=x),
                _pick(rng, ["{v} ÷ {b} = {q}, × {a} = {o}.", "One {b}th of {v} is {q}; {a} of them: {o}.",
                            "{a}/{b} × {v} = {av}/{b} = {o}."], a=a, b=b, v=v, q=v // b, av=a * v, o=out),
                out, f"{a}/{b}of{v}")


@_leaf("Fractions and Percentages", "simplifying fractions", lambda r: r.randint(2, 12) * r.randint(2, 12))
def _simplify(rng, v, x):
    if v < 2:
        raise Reject
    b = rng.randint(2, 12) * rng.randint(2, 9)
    g = math.gcd(v, b)
    if g == 1:
        raise Reject
    out = v // g
    return Step(_pick(rng, ["the numerator of {x}/{b} in lowest terms", "the top of {x}/{b} once simplified",
                            "the numerator after reducing {x}/{b}"], x=x, b=b),
                _pick(rng, ["gcd({v}, {b}) = {g}: {v}/{b} = {o}/{d}; numerator {o}.", "Divide by {g}: {o}/{d}.",
                            "{v}/{b} = {o}/{d} (both ÷ {g})."], v=v, b=b, g=g, o=out, d=b // g),
                out, f"{v}/{b}")


@_leaf("Fractions and Percentages", "mean of three numbers", lambda r: r.randint(10, 90))
def _mean(rng, v, x):
    a = rng.randint(1, 60)
    b = rng.randint(1, 60)
    b += (-(v + a + b)) % 3
    out = (v + a + b) // 3
    return Step(_pick(rng, ["the mean of {x}, {a} and {b}", "the average of {x}, {a}, {b}",
                            "the arithmetic mean of {a}, {x} and {b}"], x=x, a=a, b=b),
                _pick(rng, ["({v} + {a} + {b}) ÷ 3 = {s} ÷ 3 = {o}.", "Sum {s}, divided by 3: {o}.",
                            "{v} + {a} + {b} = {s}; {s}/3 = {o}."], v=v, a=a, b=b, s=v + a + b, o=out),
                out, order_free_key(f"{v}+{a}+{b}") + ":mean")


# ---- Counting and Geometry ------------------------------------------------------------------------------------
@_leaf("Counting and Geometry", "counting pairs", lambda r: r.randint(4, 30))
def _pairs(rng, v, x):
    if not 2 <= v <= 80:
        raise Reject
    out = v * (v - 1) // 2
    return Step(_pick(rng, ["the number of handshakes among {x} people", "how many pairs {x} players form",
                            "the number of ways to choose 2 of {x} items"], x=x),
                _pick(rng, ["{v} × {w} ÷ 2 = {o}.", "C({v}, 2) = {v} × {w} / 2 = {o}.",
                            "Each of {v} meets {w} others, counted twice: {p} ÷ 2 = {o}."],
                      v=v, w=v - 1, p=v * (v - 1), o=out),
                _check(out), f"{v}:pairs")


@_leaf("Counting and Geometry", "counting multiples", lambda r: r.randint(30, 500))
def _multiples(rng, v, x):
    d = rng.randint(2, 13)
    if v < d:
        raise Reject
    out = v // d
    return Step(_pick(rng, ["how many multiples of {d} lie between 1 and {x}",
                            "the count of multiples of {d} up to {x}",
                            "the number of whole numbers from 1 to {x} divisible by {d}"], d=d, x=x),
                _pick(rng, ["{v} ÷ {d} gives {o} remainder {r}, so {o}.", "{d} × {o} = {do} ≤ {v}, so {o} multiples.",
                            "Floor of {v}/{d} is {o}."], v=v, d=d, o=out, r=v % d, do=d * out),
                out, f"{v}:mult{d}")


@_leaf("Counting and Geometry", "rectangle perimeter", lambda r: r.randint(3, 60))
def _perimeter(rng, v, x):
    w = rng.randint(2, 40)
    out = 2 * (v + w)
    return Step(_pick(rng, ["the perimeter of a {x} by {w} rectangle", "the distance around a rectangle {x} long "
                            "and {w} wide", "the perimeter of a rectangle with sides {x} and {w}"], x=x, w=w),
                _pick(rng, ["2 × ({v} + {w}) = 2 × {s} = {o}.", "{v} + {w} + {v} + {w} = {o}.",
                            "Half the perimeter is {s}; the perimeter is {o}."], v=v, w=w, s=v + w, o=out),
                _check(out), order_free_key(f"{v}+{w}") + ":perimeter")


@_leaf("Counting and Geometry", "triangle angles", lambda r: r.randint(20, 100))
def _angle(rng, v, x):
    if not 1 <= v <= 160:
        raise Reject
    b = rng.randint(5, 175 - v)
    out = 180 - v - b
    if out < 1:
        raise Reject
    return Step(_pick(rng, ["the third angle (degrees) of a triangle with angles {x} and {b}",
                            "the missing angle of a triangle whose other angles are {x}° and {b}°",
                            "180 minus the triangle angles {x} and {b}"], x=x, b=b),
                _pick(rng, ["180 - {v} - {b} = {o}.", "Angles sum to 180: {v} + {b} = {s}, 180 - {s} = {o}.",
                            "180 - {s} = {o} where {s} = {v} + {b}."], v=v, b=b, s=v + b, o=out),
                out, order_free_key(f"{v}+{b}") + ":angle")


@_leaf("Counting and Geometry", "rounding", lambda r: r.randint(101, 999))
def _round(rng, v, x):
    if v < 10:
        raise Reject
    unit = 10 if v < 100 or rng.random() < 0.5 else 100
    out = (v + unit // 2) // unit * unit
    place = "ten" if unit == 10 else "hundred"
    return Step(_pick(rng, ["{x} rounded to the nearest {p}", "{x} to the nearest {p}",
                            "the nearest multiple of {u} to {x}"], x=x, p=place, u=unit),
                _pick(rng, ["{v} lies between {lo} and {hi}; nearer {o}.", "Look at the digit after the {p}s: "
                            "{v} rounds to {o}.", "{v} → {o} (nearest {u})."],
                      v=v, lo=v // unit * unit, hi=v // unit * unit + unit, o=out, p=place, u=unit),
                out, f"{v}~{unit}")


# ---- problems -------------------------------------------------------------------------------------------------
def composed_tree() -> SkillTree:
    topics: dict[str, list[str]] = {}
    for spec in LEAVES:
        topics.setdefault(spec.chain[0], []).append(spec.chain[1])
    tree = {"name": "Mathematics",
            "children": [{"name": t, "children": [{"name": leaf} for leaf in leaves]} for t, leaves in topics.items()]}
    return SkillTree.from_dict(tree, source="skill_distill.composed")


@dataclass(frozen=True)
class ComposedProblem:
    chains: tuple[Chain, ...]
    """The steps' leaves, in order (distinct)."""
    key: str
    problem: str
    trace: str
    answer: str


def compose_problem(rng: random.Random) -> ComposedProblem:
    """Draw 2-3 distinct leaves and chain their steps; redraws until every step accepts its input."""
    for _ in range(MAX_STALE_DRAWS):
        specs = rng.sample(LEAVES, rng.randint(MIN_STEPS, MAX_STEPS))
        try:
            value = specs[0].start(rng)
            steps = []
            for k, spec in enumerate(specs):
                step = spec.step(rng, value, str(value) if k == 0 else LETTERS[k - 1])
                steps.append(step)
                value = step.value
        except Reject:
            continue
        last = LETTERS[len(steps) - 1]
        lets = " ".join(f"Let {LETTERS[k]} be {s.question}." for k, s in enumerate(steps))
        problem = rng.choice([f"{lets} What is {last}?", f"{lets} Find {last}.", f"{lets} Compute {last}."])
        thinking = "\n".join(f"{LETTERS[k]}: {s.working} So {LETTERS[k]} = {s.value}." for k, s in enumerate(steps))
        solution = ", ".join(f"{LETTERS[k]} = {s.value}" for k, s in enumerate(steps)) + "."
        key = "|".join(f"{format_chain(spec.chain)}:{s.key}" for spec, s in zip(specs, steps, strict=True))
        return ComposedProblem(tuple(spec.chain for spec in specs), key, problem,
                               render_trace(thinking, solution, str(value)), str(value))
    raise DataError("composed generator: no valid problem in a row of draws (a step generator rejects everything)")


def heldout_eligible(key: str, share: int) -> bool:
    digest = hashlib.sha256(f"composed|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % share == 0


def generate_composed(n_pool: int, heldout_per_leaf: int, seed: int = 0, heldout_share: int = 5
                      ) -> tuple[list[ComposedProblem], list[ComposedProblem]]:
    """``n_pool`` pool problems and a held-out set in which every leaf occurs in at least ``heldout_per_leaf``
    problems, all distinct by their order-free content key; a problem is held-out eligible by a hash of its key
    alone (about 1 in ``heldout_share``). Raises DataError when the draws run dry."""
    rng = random.Random(f"composed-v{COMPOSED_VERSION}:{seed}")
    pool: list[ComposedProblem] = []
    held: list[ComposedProblem] = []
    seen: set[str] = set()
    occurs = {spec.chain: 0 for spec in LEAVES}
    stale = 0
    while (len(pool) < n_pool or min(occurs.values()) < heldout_per_leaf) and stale < MAX_STALE_DRAWS:
        p = compose_problem(rng)
        if p.key in seen:
            stale += 1
            continue
        if heldout_eligible(p.key, heldout_share):
            if not any(occurs[c] < heldout_per_leaf for c in p.chains):
                stale += 1
                continue
            held.append(p)
            for c in p.chains:
                occurs[c] += 1
        elif len(pool) < n_pool:
            pool.append(p)
        else:
            stale += 1
            continue
        seen.add(p.key)
        stale = 0
    if len(pool) < n_pool or min(occurs.values()) < heldout_per_leaf:
        raise DataError(f"composed generator ran dry at {len(pool)} pool problems and {min(occurs.values())} "
                        f"held-out problems for its rarest leaf; lower pool_per_leaf or heldout_per_leaf")
    return pool, held


def make_composed_dataset(seed: int = 0, pool_size: int = 4000, heldout_per_leaf: int = 100) -> SyntheticData:
    """The composed data set in memory: ids ``cp-000000`` onwards (pool first), every problem's chains = its
    steps' leaves. Raises DataError for bad counts."""
    if pool_size < 1 or heldout_per_leaf < 0:
        raise DataError(f"pool_size must be >= 1 and heldout_per_leaf >= 0 (got {pool_size}, {heldout_per_leaf})")
    pool_problems, held_problems = generate_composed(pool_size, heldout_per_leaf, seed)
    pool, heldout, chains = [], [], {}
    for i, prob in enumerate(pool_problems + held_problems):
        ex = Example(id=f"cp-{i:06d}", problem=prob.problem, trace=prob.trace, answer=prob.answer)
        (pool if i < len(pool_problems) else heldout).append(ex)
        chains[ex.id] = list(prob.chains)
    occurs = {format_chain(s.chain): {"pool": 0, "heldout": 0} for s in LEAVES}
    for split, problems in (("pool", pool_problems), ("heldout", held_problems)):
        for prob in problems:
            for c in prob.chains:
                occurs[format_chain(c)][split] += 1
    metadata = {"generator": "skill_distill.composed", "generator_version": COMPOSED_VERSION, "preset": "composed",
                "seed": seed, "pool_size": pool_size, "heldout_per_leaf": heldout_per_leaf,
                "steps": [MIN_STEPS, MAX_STEPS],
                "totals": {"pool": len(pool), "heldout": len(heldout), "leaves": len(LEAVES)},
                "counts": occurs,
                "heldout_rule": "a problem is held-out eligible iff sha256(order-free content key) % 5 == 0; every "
                                f"leaf occurs in at least {heldout_per_leaf} held-out problems"}
    return SyntheticData(composed_tree(), pool, heldout, chains, metadata)


def run_make_composed_data(output_dir: str, seed: int = 0, pool_size: int = 4000, heldout_per_leaf: int = 100
                           ) -> dict:
    """Generate the composed skill corpus (every problem chains 2-3 of 25 leaf skills; several phrasings each).

    Writes the same canonical files as ``make-data`` (tree.json, pool.jsonl, heldout.jsonl, attribution.jsonl with
    2-3 chains per id, metadata.json). Raises DataError for bad counts.

    Args:
        output_dir: Directory to write into (created if missing).
        seed: Seed of every draw; the same seed gives byte-identical files.
        pool_size: Pool problems (all leaves together).
        heldout_per_leaf: Held-out problems each leaf must occur in (a problem counts for each of its leaves).
    """
    data = make_composed_dataset(seed, pool_size, heldout_per_leaf)
    data.metadata["command"] = (f"python -m skill_distill make-composed-data --output_dir "
                                f"{shlex.quote(str(output_dir))} --seed {seed} --pool_size {pool_size} "
                                f"--heldout_per_leaf {heldout_per_leaf}")
    return write_dataset(output_dir, data)
