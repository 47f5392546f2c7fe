"""Decontamination: drop pool problems that overlap an evaluation set (the ``decontaminate`` stage).

A pool problem is a hit for a benchmark when, after normalisation, it

- *exact*: equals one of the benchmark's problems;
- *similar*: has a Jaccard similarity of at least ``similarity`` (0.4) with one, over their sets of token 3-grams
  (tokens: letter runs and single digits): an edited copy (a number changed, a word swapped, a clause moved,
  re-typeset) keeps most 3-grams, while two different problems that share a stock phrase stay far below, since
  the measure counts both whole texts;
- *contained*: holds at least ``containment`` (80%) of the 3-grams of one benchmark problem of at least ``n`` (8)
  words (the problem copied into a longer text);
- *ngram* (off by default, ``max_problems_per_ngram`` >= 1): shares a run of ``n`` words with one, counting only
  the runs found in at most ``max_problems_per_ngram`` distinct benchmark problems.

The benchmarks default to every registered set (``skill_distill.eval_sets.REGISTRY``: AIME24, AIME25, AMC23,
MATH-500, MATH-L5, OlympiadBench, the sets of docs/METHOD.md §7); any ``BenchmarkSpec`` may be added.

Normalisation (also the pool's problem identity, ``skill_distill.pool``): Unicode NFKC, lower case, ``$`` and the
math delimiters, spacing commands and sizing commands (``\\left``, ``\\right``, ``\\big``...) removed,
``\\dfrac``/``\\tfrac`` read as ``\\frac``, whitespace collapsed. Words are ``\\w+`` runs of the normalised text.

Why these rules, measured by ``benchmarks/bench_decontamination_recall.py`` (docs/METHOD.md "Decontamination"): a
shared 8-gram (open-r1's rule, the default before) misses short edited copies, in which every 8-word run holds the
edit, and removes clean problems that share a stock phrase with one benchmark problem ("find the number of ordered
pairs of positive integers", "m and n are relatively prime positive integers. find m+n"): discounting n-grams found
in several benchmark problems does not help much, since most stock phrases occur in just one of them. The
similarity rule catches the short edits and scales with both lengths; the containment rule keeps the n-gram rule's
one strength, a benchmark problem inside a longer text.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path

from skill_distill.eval_sets import REGISTRY, BenchmarkSpec
from skill_distill.io import (
    ConfigError,
    DataError,
    atomic_write,
    iter_jsonl,
    read_json,
    write_json,
)

WORD = re.compile(r"\w+")
TOKEN = re.compile(r"[^\W\d_]+|\d")
"""Tokens of the similarity rule: letter runs and single digits, so that ``\frac12`` and ``\frac{1}{2}`` agree and a
changed number costs one token, not a whole word."""
COUNTS_FILE = "decontamination.json"
"""Written beside a decontaminated pool: the counts, read by the selection manifest and the model card."""
HITS_FILE = "decontamination_hits.jsonl"
RULES = ("exact", "ngram", "similar", "contained")

_SPACING = re.compile(r"\\[,;:! ]")  # \, \; \: \! and "\ ": spacing only
_SIZING = re.compile(r"\\(?:left|right|middle|bigg?[lrm]?|displaystyle|textstyle)(?![a-z])")
_FRAC = re.compile(r"\\[dt]frac(?![a-z])")
_MATH_DELIMITERS = re.compile(r"\\[()\[\]]")  # \( \) \[ \]


def normalise(text: str) -> str:
    """NFKC, lower case; ``$``, the math delimiters ``\\( \\) \\[ \\]``, the spacing commands (``\\,`` ``\\;``
    ``\\:`` ``\\!`` ``\\ ``) and the sizing commands (``\\left``, ``\\right``, ``\\middle``, ``\\big``...,
    ``\\displaystyle``) removed; ``\\dfrac`` and ``\\tfrac`` read as ``\\frac``; whitespace collapsed, stripped."""
    text = unicodedata.normalize("NFKC", text).lower().replace("$", "")
    text = _SPACING.sub("", text)
    if "\\" in text:
        text = _MATH_DELIMITERS.sub(" ", _FRAC.sub(r"\\frac", _SIZING.sub("", text)))
    return " ".join(text.split())  # str.split: every Unicode whitespace run, faster than a regex here


def default_benchmarks() -> list[str]:
    return list(REGISTRY)


@dataclass
class DecontaminationConfig:
    """Which evaluation sets a pool is checked against, and the three rules' settings (module docstring; the
    defaults are chosen by ``benchmarks/bench_decontamination_recall.py``, docs/METHOD.md "Decontamination")."""

    enabled: bool = True
    benchmarks: list[str | BenchmarkSpec] = field(default_factory=default_benchmarks)
    """Registered names (default: all of them) or benchmark specs (a new set needs ``name`` and ``path`` or
    ``hf_name``). Each set is checked as it is evaluated (its ``where`` and ``text_only`` filters apply)."""
    n: int = 8
    """Words: the containment rule applies to benchmark problems of at least n words, and the n-gram rule (when on)
    matches runs of n words (open-r1: 8, AceReason: 9, lm-eval: 13)."""
    max_problems_per_ngram: int = 0
    """N-gram rule: a shared run of ``n`` words is a hit if at most this many distinct benchmark problems contain it
    (a stock phrase in several problems identifies none of them). 0 (the default): no n-gram rule, which removes
    clean problems that share a stock phrase with a single benchmark problem (module docstring)."""
    similarity: float = 0.4
    """Similarity rule: a hit when the Jaccard similarity of the token ``shingle``-gram sets of the pool problem and
    one benchmark problem reaches this value (it catches short edited copies, in which every n-gram holds an edit;
    and it scales with both lengths, so a shared stock phrase in two different problems stays below it). 1.0 or
    more turns it off."""
    containment: float = 0.8
    """Containment rule: a hit when at least this share of the shingles of one benchmark problem of at least ``n``
    words occurs in the pool problem (the problem copied into a longer text). Above 1.0 it is off."""
    shingle: int = 3
    """Tokens per shingle of the similarity and containment rules (tokens: letter runs and single digits)."""

    def __post_init__(self):
        if self.n < 1:
            raise ConfigError(f"decontamination.n must be >= 1, got {self.n}")
        if self.max_problems_per_ngram < 0:
            raise ConfigError(f"decontamination.max_problems_per_ngram must be >= 0 (0: no n-gram rule), got "
                              f"{self.max_problems_per_ngram}")
        if not 0.0 < self.similarity:
            raise ConfigError(f"decontamination.similarity must be > 0 (1.0 or more: no similarity rule), got "
                              f"{self.similarity}")
        if not 0.0 < self.containment:
            raise ConfigError(f"decontamination.containment must be > 0 (above 1.0: no containment rule), got "
                              f"{self.containment}")
        if self.shingle < 1:
            raise ConfigError(f"decontamination.shingle must be >= 1, got {self.shingle}")


def _ngrams(words: list[str], n: int):
    """The word n-grams of ``words`` as tuples, in order (built by zip in C, not by slicing in Python)."""
    return zip(*(words[i:] for i in range(n)), strict=False)


RARE_SHINGLE_PROBLEMS = 20
"""Shingles in more benchmark problems than this only add to the score, they do not propose candidates (speed)."""


class BenchmarkIndex:
    """The normalised texts, word n-grams and token shingles of evaluation problems, for fast lookup of pool
    problems."""

    def __init__(self, problems: Iterable[tuple[str, str, str]], config: DecontaminationConfig | None = None):
        """``problems``: (benchmark name, problem id, problem text) triples; ``config``: the rules' settings (its
        ``benchmarks`` are not read here)."""
        config = config if config is not None else DecontaminationConfig()
        self.config = config
        self.n = n = config.n
        self.exact: dict[str, list[tuple[str, str]]] = {}
        self.problems: dict[str, int] = {}
        self.short: dict[str, int] = {}
        """Benchmark problems shorter than n words (no n-gram, not matched by containment)."""
        texts: list[str] = []  # distinct normalised benchmark texts; a text's owners are self.exact[text]
        for bench, pid, text in problems:
            norm = normalise(text)
            self.problems[bench] = self.problems.get(bench, 0) + 1
            if norm not in self.exact:
                texts.append(norm)
            self.exact.setdefault(norm, []).append((bench, pid))
            if len(WORD.findall(norm)) < n:
                self.short[bench] = self.short.get(bench, 0) + 1
        self.texts = texts
        grams: dict[tuple[str, ...], list[int]] = {}
        shingles: dict[tuple[str, ...], list[int]] = {}
        self.shingle_sets: list[frozenset] = []
        self.long_text = [len(WORD.findall(norm)) >= n for norm in texts]
        for k, norm in enumerate(texts):
            for gram in dict.fromkeys(_ngrams(WORD.findall(norm), n)):
                grams.setdefault(gram, []).append(k)
            own = frozenset(_ngrams(TOKEN.findall(norm), config.shingle))
            self.shingle_sets.append(own)
            for sh in own:
                shingles.setdefault(sh, []).append(k)
        # an n-gram in several distinct problems identifies none of them (stock phrases): it is not indexed
        self.grams = {g: ks for g, ks in grams.items() if len(ks) <= config.max_problems_per_ngram}
        self.gram_set = frozenset(self.grams)
        self.rare_shingles = {sh: ks for sh, ks in shingles.items() if len(ks) <= RARE_SHINGLE_PROBLEMS}
        self.common_shingles = frozenset(sh for sh, ks in shingles.items() if len(ks) > RARE_SHINGLE_PROBLEMS)

    @classmethod
    def from_config(cls, config: DecontaminationConfig) -> BenchmarkIndex:
        """Load every set of ``config.benchmarks`` through ``skill_distill.eval_sets.load_benchmark`` (its data
        location rules apply)."""
        from skill_distill.eval_sets import load_benchmark, resolve_specs

        triples = []
        for spec in resolve_specs(list(config.benchmarks)):
            loaded = load_benchmark(spec)
            triples.extend((loaded.name, p.id, p.problem) for p in loaded.problems)
        return cls(triples, config)

    def _found(self, found: dict[str, dict], k: int, rule: str, **detail) -> None:
        for bench, pid in self.exact[self.texts[k]]:
            found.setdefault(bench, {"benchmark": bench, "problem_id": pid, "rule": rule, **detail})

    def hits(self, text: str) -> list[dict]:
        """One hit per benchmark the text overlaps, by the first rule that finds one (module docstring): ``exact``,
        ``ngram``, then ``similar`` or ``contained`` for the benchmark problem of highest score. A hit is
        ``{"benchmark", "problem_id", "rule", "ngram", "score"}``: ``ngram`` is the normalised text (exact) or the
        first shared n-gram in text order (ngram), else None; ``score`` is the Jaccard similarity (similar) or the
        share of the benchmark problem's shingles found (contained), 3 decimals, else None."""
        norm = normalise(text)
        found: dict[str, dict] = {}
        for bench, pid in self.exact.get(norm, ()):
            found.setdefault(bench, {"benchmark": bench, "problem_id": pid, "rule": "exact", "ngram": norm,
                                     "score": None})
        words = WORD.findall(norm)
        if self.gram_set and not self.gram_set.isdisjoint(_ngrams(words, self.n)):
            for gram in _ngrams(words, self.n):  # in text order: the first shared n-gram of each benchmark is reported
                for k in self.grams.get(gram, ()):
                    self._found(found, k, "ngram", ngram=" ".join(gram), score=None)
        if self.config.similarity <= 1.0 or self.config.containment <= 1.0:
            for k, rule, score in self._similar(norm):
                self._found(found, k, rule, ngram=None, score=round(score, 3))
        return list(found.values())

    def _similar(self, norm: str) -> list[tuple[int, str, float]]:
        """(benchmark text, rule, score) of the texts that ``norm`` is similar to or contains, best first.
        Candidates share at least one shingle found in few benchmark problems (speed); the score counts every
        shingle."""
        own = frozenset(_ngrams(TOKEN.findall(norm), self.config.shingle))
        if not own:
            return []
        # rare shingles shared per candidate, counted in C; with the query's common shingles they bound the overlap
        rare_shared = Counter(chain.from_iterable(filter(None, map(self.rare_shingles.get, own))))
        common = len(own & self.common_shingles)
        similarity, containment = self.config.similarity, self.config.containment
        out = []
        for k, rare in rare_shared.items():
            other = self.shingle_sets[k]
            bound = rare + common  # >= |own & other|: skip the pairs no rule can reach
            if bound < similarity * max(len(own), len(other)) and (not self.long_text[k]
                                                                     or bound < containment * len(other)):
                continue
            shared = len(own & other)
            score = shared / (len(own) + len(other) - shared)
            if score >= similarity:
                out.append((k, "similar", score))
            elif self.long_text[k] and shared >= containment * len(other):
                out.append((k, "contained", shared / len(other)))
        return sorted(out, key=lambda hit: -hit[2])


class HitCounter:
    """Counts of a decontamination pass, in the form written to stats, manifests and model cards."""

    def __init__(self, index: BenchmarkIndex, config: DecontaminationConfig):
        self.index, self.config = index, config
        self.checked = 0
        self.removed = 0
        self.by_benchmark: dict[str, int] = {}
        self.by_rule: dict[str, int] = dict.fromkeys(RULES, 0)

    def check(self, pool_id: str, text: str) -> list[dict]:
        """The hits of one pool problem (each with ``id``), counted."""
        self.checked += 1
        hits = self.index.hits(text)
        if hits:
            self.removed += 1
            for h in hits:
                self.by_benchmark[h["benchmark"]] = self.by_benchmark.get(h["benchmark"], 0) + 1
                self.by_rule[h["rule"]] += 1
        return [{"id": pool_id, **h} for h in hits]

    def summary(self) -> dict:
        return {"n": self.index.n, "benchmarks": dict(self.index.problems), "checked": self.checked,
                "removed": self.removed, "hits_by_benchmark": dict(sorted(self.by_benchmark.items())),
                "hits_by_rule": dict(self.by_rule), "benchmark_problems_short": dict(self.index.short)}


def read_counts(pool: str | Path) -> dict | None:
    """The decontamination counts written beside a pool file (``decontamination.json``), or None."""
    p = Path(pool).parent / COUNTS_FILE
    return read_json(p, "decontamination counts") if p.is_file() else None


def run_decontaminate(pool: str, output: str,
                      decontamination: DecontaminationConfig = DecontaminationConfig(),
                      hits: str | None = None) -> dict:
    """Drop the pool problems that overlap an evaluation set (the ``decontaminate`` stage; ``pool`` runs it too).

    Args:
        pool: canonical pool JSONL (``{"id", "problem", ...}``, the pool stage's output).
        output: the pool without the hits (same rows otherwise, same order).
        decontamination: benchmarks (default: every registered set) and n-gram length (``enabled`` is ignored).
        hits: JSONL of every hit, one row per (pool problem, benchmark): ``{"id", "benchmark", "problem_id",
            "rule", "ngram"}``; default ``decontamination_hits.jsonl`` beside ``output``. The counts go to
            ``decontamination.json`` beside ``output``.

    Returns the counts. Raises DataError for a missing or malformed pool or benchmark file.
    """
    out = Path(output)
    if out.resolve() == Path(pool).resolve():
        raise DataError(f"output {output} is the input pool; write the decontaminated pool to another file")
    config = decontamination
    counter = HitCounter(BenchmarkIndex.from_config(config), config)
    hits_path = Path(hits) if hits else out.parent / HITS_FILE
    kept = 0
    with atomic_write(out) as fo, atomic_write(hits_path) as fh:
        for line, row in enumerate(iter_jsonl(pool, "pool file"), start=1):
            if "problem" not in row or "id" not in row:
                raise DataError(f"{pool}:{line}: a pool row needs 'id' and 'problem' (the pool stage's format)")
            found = counter.check(str(row["id"]), str(row["problem"]))
            for h in found:
                fh.write(json.dumps(h, ensure_ascii=False) + "\n")
            if not found:
                fo.write(json.dumps(row, ensure_ascii=False) + "\n")
                kept += 1
    summary = {**counter.summary(), "kept": kept, "pool": str(pool), "hits_file": str(hits_path),
               "config": asdict(config)}
    write_json(out.parent / COUNTS_FILE, summary)
    print(f"decontaminated {pool}: {counter.removed} of {counter.checked} problems overlap "
          f"{', '.join(counter.index.problems)} (n={config.n}); wrote {out}, {hits_path}")
    return summary
