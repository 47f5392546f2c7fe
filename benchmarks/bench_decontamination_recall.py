"""Decontamination quality: recall on edited copies of the real benchmark problems, per edit kind, and the false
positives on clean competition-style problems (targets: edited recall >= 95%, false positives <= 1%).

    nice .venv/bin/python benchmarks/bench_decontamination_recall.py [--seed 0] [--clean 1000] [--show 5]

Both sides are built here, seeded, from the benchmark problems available offline (every registered set through
``skill_distill.eval_sets``: AIME24/25, AMC23, MATH-500, MATH-L5, OlympiadBench; the pinned files of
``skill_distill/assets.py``):

- edited copies, one per benchmark problem and edit kind where the edit applies: ``number`` (one number changed),
  ``word`` (one word of the prose replaced), ``respaced`` (spacing and case changed), ``latex`` (``\\frac`` ->
  ``\\dfrac``, parentheses -> ``\\left( \\right)``, ``$...$`` -> ``\\(...\\)``, ``\\cdot`` -> ``\\times``),
  ``reordered`` (the last sentence moved to the front, or two clauses of a one-sentence problem swapped) and
  ``number+word`` (both edits at once);
- clean problems from templates in the style of competition problems (``clean_problems``), with the stock phrases of
  the sets ("the number of ordered pairs of positive integers", "m and n are relatively prime positive integers. Find
  m+n", "Express your answer as a common fraction", "Find the remainder when ... is divided by 1000"), and the
  shipped synthetic quickstart pool.

A copy counts as caught when a hit names its source benchmark; a clean problem is a false positive when it has any
hit. Printed per rule setting (the n-gram rule alone as before issue 26, stock n-grams discounted, the similarity
rule at several thresholds): recall per edit kind, overall edited recall, and the false-positive rate, with a few
examples of misses and false positives (``--show``).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skill_distill.decontamination import BenchmarkIndex, DecontaminationConfig, normalise
from skill_distill.eval_sets import REGISTRY, load_benchmark
from skill_distill.io import iter_jsonl

REPO = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"(?<![\\a-zA-Z])\d+")
PROSE_WORD = re.compile(r"(?<![\\$a-zA-Z])[A-Za-z]{4,}(?![a-zA-Z{])")
SENTENCE = re.compile(r"(?<=[.?!])\s+(?=[A-Z$\\])")
REPLACEMENTS = ["value", "quantity", "number", "figure", "amount", "result", "determine", "compute", "given",
                "certain", "exactly", "different", "possible", "total", "real", "whole"]


def _outside_math(text: str, start: int) -> bool:
    return text[:start].count("$") % 2 == 0


def edit_number(text: str, rng: random.Random) -> str | None:
    found = list(NUMBER.finditer(text))
    if not found:
        return None
    m = rng.choice(found)
    value = int(m.group())
    new = value + rng.randint(1, 9) if value < 10 or rng.random() < 0.5 else value * 2
    return text[: m.start()] + str(new) + text[m.end():]


def edit_word(text: str, rng: random.Random) -> str | None:
    found = [m for m in PROSE_WORD.finditer(text) if _outside_math(text, m.start())]
    if not found:
        return None
    m = rng.choice(found)
    new = rng.choice([w for w in REPLACEMENTS if w != m.group().lower()])
    return text[: m.start()] + new + text[m.end():]


def edit_respaced(text: str, rng: random.Random) -> str:
    out = re.sub(r"\s+", lambda _: rng.choice([" ", "  ", "\n", " \t "]), text)
    out = re.sub(r"([=+\-<>])", lambda m: f" {m.group()} " if rng.random() < 0.7 else m.group(), out)
    return out.upper() if rng.random() < 0.3 else out


def edit_latex(text: str, rng: random.Random) -> str | None:
    out = text.replace("\\frac", "\\dfrac").replace("\\cdot", "\\times")
    out = re.sub(r"\$([^$]+)\$", lambda m: "\\(" + m.group(1).replace("(", "\\left(").replace(")", "\\right)")
                 + "\\)", out)
    return out if out != text else None


def edit_reordered(text: str, rng: random.Random) -> str | None:
    parts = SENTENCE.split(text.strip())
    if len(parts) >= 2:
        return " ".join([parts[-1], *parts[:-1]])
    clauses = text.strip().split(", ", 1)
    if len(clauses) == 2 and len(clauses[1]) > 3:
        head, tail = clauses
        return tail[0].upper() + tail[1:].rstrip(".?") + ", " + head[0].lower() + head[1:] + "."
    return None


def edit_number_and_word(text: str, rng: random.Random) -> str | None:
    once = edit_number(text, rng)
    return None if once is None else edit_word(once, rng)


PREAMBLES = ["Solve the following problem and explain each step.", "This question comes from a practice contest.",
             "Read carefully before you answer."]
CODAS = ["Give the final answer in a box.", "Justify your answer with a short proof.",
         "A hint: first try small cases and look for a pattern, then prove the pattern you find."]


def edit_embedded(text: str, rng: random.Random) -> str:
    return f"{rng.choice(PREAMBLES)} {text} {rng.choice(CODAS)}"


EDITS = {"number": edit_number, "word": edit_word, "respaced": edit_respaced, "latex": edit_latex,
         "reordered": edit_reordered, "number+word": edit_number_and_word, "embedded": edit_embedded}

NAMES = ["Alice", "Bob", "Carla", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kofi", "Lena"]
OBJECTS = ["marbles", "coins", "stamps", "books", "pencils", "cards", "apples", "tiles"]


def clean_problems(count: int, rng: random.Random) -> list[str]:
    """Competition-style problems from templates (numbers, names and shapes drawn), several with the sets' stock
    phrases; none is a benchmark problem."""
    r = rng.randint

    def pick(seq):
        return rng.choice(seq)

    templates = [
        lambda: f"Find the number of ordered pairs of positive integers $(a,b)$ such that $a^2 + {r(2, 9)}b^2 = "
                f"{r(100, 999)}$.",
        lambda: f"Find the number of ordered pairs of positive integers $(x,y)$ with $x < y$ and $\\operatorname"
                f"{{lcm}}(x,y) = {r(2, 60) * 6}$.",
        lambda: f"Compute the number of ordered pairs of positive integers $(m, n)$ satisfying $m + {r(2, 7)}n = "
                f"{r(40, 400)}$ and $m$ odd.",
        lambda: f"A bag holds ${r(3, 9)}$ red and ${r(3, 9)}$ blue {pick(OBJECTS)}. {pick(NAMES)} draws ${r(2, 4)}$ "
                "of them at random without replacement. The probability that exactly two are red is $\\frac{m}{n}$, "
                "where $m$ and $n$ are relatively prime positive integers. Find $m+n$.",
        lambda: f"A fair coin is tossed ${r(6, 12)}$ times. The probability that no two consecutive tosses are both "
                "heads is $\\tfrac{m}{n}$, where $m$ and $n$ are relatively prime positive integers. Find $m+n$.",
        lambda: f"Let $S$ be the sum of all fractions $\\frac{{1}}{{k(k+{r(1, 4)})}}$ for $k = 1$ to ${r(10, 90)}$. "
                "Then $S = \\frac{m}{n}$, where $m$ and $n$ are relatively prime positive integers. Find $m+n$.",
        lambda: f"Find the remainder when ${r(2, 13)}^{{{r(50, 2025)}}} + {r(2, 9)}$ is divided by $1000$.",
        lambda: f"Find the remainder when the sum of the first ${r(20, 500)}$ positive cubes is divided by "
                f"${r(7, 97)}$.",
        lambda: f"How many positive integers less than ${r(200, 5000)}$ are divisible by ${r(3, 9)}$ but not by "
                f"${r(10, 15)}$?",
        lambda: f"What is the smallest positive integer $n$ such that $n^2 + {r(2, 50)}n$ is a multiple of "
                f"${r(11, 99)}$?",
        lambda: f"In triangle $ABC$, $AB = {r(5, 20)}$, $BC = {r(5, 20)}$, and the angle at $B$ is "
                f"${pick([30, 45, 60, 90, 120])}^\\circ$. Find the square of the length of $AC$.",
        lambda: f"A rectangle has perimeter ${r(20, 80) * 2}$ and its diagonal is ${r(10, 40)}$ units long. What "
                "is the area of the rectangle? Express your answer as a common fraction.",
        lambda: f"{pick(NAMES)} has ${r(10, 90)}$ {pick(OBJECTS)} and gives a third of them to {pick(NAMES)}, who "
                f"already had ${r(5, 40)}$. How many {pick(OBJECTS)} does {pick(NAMES)} have now?",
        lambda: f"The polynomial $x^3 - {r(2, 20)}x^2 + {r(2, 60)}x - {r(2, 90)}$ has roots $r$, $s$, and $t$. "
                "Compute $r^2 + s^2 + t^2$.",
        lambda: f"Let $f(x) = {r(2, 9)}x^2 - {r(2, 20)}x + {r(1, 30)}$. For how many integers $k$ between $1$ and "
                f"${r(50, 500)}$ is $f(k)$ a perfect square?",
        lambda: f"A sequence is defined by $a_1 = {r(1, 5)}$ and $a_{{n+1}} = {r(2, 4)}a_n - {r(1, 3)}$ for "
                f"$n \\ge 1$. Find $a_{{{r(8, 20)}}}$.",
        lambda: f"Evaluate $\\sum_{{k=1}}^{{{r(10, 60)}}} \\left( k^2 - {r(1, 9)}k \\right)$.",
        lambda: f"Solve for $x$: $\\dfrac{{{r(2, 9)}x + {r(1, 20)}}}{{{r(2, 9)}}} = {r(3, 40)}$. Express your "
                "answer as a common fraction.",
        lambda: f"Each of ${r(5, 12)}$ students shakes hands with every student taller than themselves. If no two "
                "students have the same height, how many handshakes take place?",
        lambda: f"A circle of radius ${r(2, 12)}$ is inscribed in a square, and a smaller square is inscribed in "
                "the circle. What is the ratio of the area of the smaller square to that of the larger square?",
        lambda: f"Find the sum of all positive divisors of ${r(2, 9) * r(10, 99)}$ that are perfect squares.",
        lambda: f"How many ways are there to arrange the letters of the word {pick(['BANANA', 'LETTER', 'COOKIE', 'PEPPER', 'SUCCESS'])} "  # noqa: E501
                f"so that no two identical letters are adjacent, if ${r(1, 2)}$ letters are fixed in place?",
        lambda: f"A train leaves at ${r(1, 11)}$:{r(10, 59)} travelling at ${r(40, 90)}$ miles per hour. A second "
                f"train leaves the same station ${r(1, 3)}$ hours later at ${r(60, 120)}$ miles per hour. After how "
                "many hours does the second train overtake the first?",
        lambda: f"Let $z$ be a complex number with $|z| = {r(2, 9)}$ and $z + \\overline{{z}} = {r(1, 6)}$. Find "
                "the imaginary part of $z^2$.",
        lambda: f"Determine all real $x$ with $\\sqrt{{x + {r(1, 30)}}} + \\sqrt{{x - {r(1, 9)}}} = {r(4, 15)}$.",
        lambda: f"The mean of ${r(4, 9)}$ test scores is ${r(60, 95)}$. After one more test the mean becomes "
                f"${r(60, 95)}$. What was the score of the last test?",
        lambda: f"What is the greatest common divisor of ${r(100, 999)}$ and ${r(100, 999)}$?",
        lambda: f"Find the least positive integer $n$ for which $2^n \\equiv {r(2, 30)} \\pmod{{{r(31, 97)}}}$.",
        lambda: f"A cube of side ${r(3, 10)}$ is painted and cut into unit cubes. How many unit cubes have paint "
                f"on exactly {pick(['one', 'two', 'three'])} faces?",
        lambda: f"Points $P$ and $Q$ are chosen on a segment of length ${r(6, 30)}$. What is the expected distance "
                "between them? Express your answer as a common fraction.",
    ]
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < count:
        text = rng.choice(templates)()
        if normalise(text) not in seen:
            seen.add(normalise(text))
            out.append(text)
    return out


SETTINGS = {  # name -> (max_problems_per_ngram, similarity, containment)
    "ngram only (main)": (10**9, 2.0, 2.0),
    "ngram, stock discounted": (1, 2.0, 2.0),
    "similar 0.4": (0, 0.4, 2.0),
    "similar 0.5": (0, 0.5, 2.0),
    "similar 0.4 + contained 0.7": (0, 0.4, 0.7),
    "similar 0.4 + contained 0.8": (0, 0.4, 0.8),
    "similar 0.5 + contained 0.8": (0, 0.5, 0.8),
    "similar 0.4 + contained 0.9": (0, 0.4, 0.9),
    "disc. + similar 0.4 + contained 0.8": (1, 0.4, 0.8),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clean", type=int, default=1000, help="clean template problems")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--show", type=int, default=3, help="examples of misses and false positives per setting")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    triples = [(name, p.id, p.problem) for name in REGISTRY for p in load_benchmark(name).problems]
    distinct = {normalise(t): (b, pid, t) for b, pid, t in triples}
    copies: dict[str, list[tuple[str, str]]] = {kind: [] for kind in EDITS}  # kind -> (source benchmark, text)
    for bench, _, text in distinct.values():
        for kind, edit in EDITS.items():
            edited = edit(text, rng)
            if edited is not None and (normalise(edited) != normalise(text) or kind in ("respaced", "latex")):
                copies[kind].append((bench, edited))
    clean = clean_problems(args.clean, rng)
    quick = [r["problem"] for r in iter_jsonl(REPO / "data" / "quickstart" / "pool.jsonl")]
    print(f"benchmark problems: {len(triples)} ({len(distinct)} distinct texts) in {', '.join(REGISTRY)}; edited "
          f"copies: {', '.join(f'{k} {len(v)}' for k, v in copies.items())}; clean: {len(clean)} template problems "
          f"+ {len(quick)} quickstart problems")
    for name, texts in (("template", clean), ("quickstart", quick)):
        near = sorted(nearest_similarity(triples, texts))
        print(f"clean {name} problems, Jaccard similarity to the nearest benchmark problem: median "
              f"{near[len(near) // 2]:.3f}, 99th percentile {near[int(0.99 * (len(near) - 1))]:.3f}, "
              f"max {near[-1]:.3f}")
    kinds = list(EDITS)
    print("| setting | " + " | ".join(kinds) + " | edited recall | FP template | FP quickstart | s |")
    print("|---" * (len(kinds) + 5) + "|")
    for name, (per_ngram, similarity, containment) in SETTINGS.items():
        t0 = time.perf_counter()
        index = BenchmarkIndex(triples, DecontaminationConfig(benchmarks=[], n=args.n, similarity=similarity,
                                                              max_problems_per_ngram=per_ngram,
                                                              containment=containment))
        recall, misses = {}, []
        for kind in kinds:
            caught = 0
            for bench, text in copies[kind]:
                if any(h["benchmark"] == bench for h in index.hits(text)):
                    caught += 1
                else:
                    misses.append((kind, text))
            recall[kind] = caught / max(1, len(copies[kind]))
        total = sum(len(v) for v in copies.values())
        edited_recall = sum(recall[k] * len(copies[k]) for k in kinds) / total
        fps = [(t, index.hits(t)) for t in clean]
        fps = [(t, h) for t, h in fps if h]
        fq = sum(1 for t in quick if index.hits(t))
        took = time.perf_counter() - t0
        print(f"| {name} | " + " | ".join(f"{100 * recall[k]:.1f}%" for k in kinds)
              + f" | {100 * edited_recall:.1f}% | {100 * len(fps) / len(clean):.1f}% ({len(fps)}) | "
                f"{100 * fq / len(quick):.1f}% ({fq}) | {took:.1f} |")
        for kind, text in misses[: args.show]:
            print(f"    miss [{kind}]: {text[:150]!r}")
        for text, hits in fps[: args.show]:
            h = hits[0]
            print(f"    false positive: {text[:120]!r} -> {h['benchmark']} {h['rule']} {h['ngram'] or h['score']}")


def nearest_similarity(triples, texts: list[str], shingle: int = 3) -> list[float]:
    """Per text, the largest shingle Jaccard similarity with any benchmark problem (0 when none shares a rare
    shingle): how far the clean problems stay below the threshold."""
    index = BenchmarkIndex(triples, DecontaminationConfig(benchmarks=[], max_problems_per_ngram=0, similarity=1e-9,
                                                          containment=2.0, shingle=shingle))
    return [max((s for _, rule, s in index._similar(normalise(t)) if rule == "similar"), default=0.0)
            for t in texts]


if __name__ == "__main__":
    main()
