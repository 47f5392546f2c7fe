"""Decontamination: drop pool problems that overlap an evaluation set (the ``decontaminate`` stage).

A pool problem is a hit for a benchmark when, after normalisation, it equals one of the benchmark's problems
(*exact* rule) or shares a run of ``n`` consecutive words with one (*n-gram* rule). The benchmarks default to every
registered set (``skill_distill.eval_sets.REGISTRY``: AIME24, AIME25, AMC23, MATH-500, MATH-L5, OlympiadBench,
the sets of docs/METHOD.md §7); any ``BenchmarkSpec`` may be added.

Normalisation (also the pool's problem identity, ``skill_distill.pool``): Unicode NFKC, lower case, ``$``, ``\\,``
and ``\\ `` removed, whitespace collapsed. Words are ``\\w+`` runs of the normalised text.

Choice of n (default 8, open-r1's ``decontaminate.py``, which checks AIME and MATH-500 only): a smaller n catches
more paraphrases and re-typeset copies but also flags more innocent problems that share a stock phrase
("find the number of ordered pairs of positive integers" has 9 words: a hit at n = 8 or 9, not at 13);
AceReason uses 9, lm-eval's janitor 13.
At 13 a competition problem of 30 words with one changed number still matches only if 13 untouched words
remain in a row, so short edited copies slip through; at 8 they are caught, and the hits file lets one review the
stock-phrase false positives (each hit names its n-gram). Problems shorter than n words can only be caught
by the exact rule; they are counted (``short_exact_only``).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
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
COUNTS_FILE = "decontamination.json"
"""Written beside a decontaminated pool: the counts, read by the selection manifest and the model card."""
HITS_FILE = "decontamination_hits.jsonl"


def normalise(text: str) -> str:
    """NFKC, lower case, ``$``, ``\\,`` and ``\\ `` removed, whitespace collapsed, stripped."""
    text = unicodedata.normalize("NFKC", text).lower().replace("$", "").replace("\\,", "").replace("\\ ", "")
    return " ".join(text.split())  # str.split: every Unicode whitespace run, faster than a regex here


def default_benchmarks() -> list[str]:
    return list(REGISTRY)


@dataclass
class DecontaminationConfig:
    """Which evaluation sets a pool is checked against, and the n-gram length (module docstring)."""

    enabled: bool = True
    benchmarks: list[str | BenchmarkSpec] = field(default_factory=default_benchmarks)
    """Registered names (default: all of them) or benchmark specs (a new set needs ``name`` and ``path`` or
    ``hf_name``). Each set is checked as it is evaluated (its ``where`` and ``text_only`` filters apply)."""
    n: int = 8
    """Words per n-gram (open-r1: 8, AceReason: 9, lm-eval: 13)."""

    def __post_init__(self):
        if self.n < 1:
            raise ConfigError(f"decontamination.n must be >= 1, got {self.n}")


def _ngrams(words: list[str], n: int):
    """The word n-grams of ``words`` as tuples, in order (built by zip in C, not by slicing in Python)."""
    return zip(*(words[i:] for i in range(n)), strict=False)


class BenchmarkIndex:
    """The normalised texts and word n-grams of evaluation problems, for fast lookup of pool problems."""

    def __init__(self, problems: Iterable[tuple[str, str, str]], n: int = 8):
        """``problems``: (benchmark name, problem id, problem text) triples."""
        self.n = n
        self.exact: dict[str, list[tuple[str, str]]] = {}
        self.grams: dict[tuple[str, ...], list[tuple[str, str]]] = {}
        self.problems: dict[str, int] = {}
        self.short: dict[str, int] = {}
        """Benchmark problems shorter than n words (matched by the exact rule only)."""
        for bench, pid, text in problems:
            norm = normalise(text)
            self.problems[bench] = self.problems.get(bench, 0) + 1
            self.exact.setdefault(norm, []).append((bench, pid))
            words = WORD.findall(norm)
            if len(words) < n:
                self.short[bench] = self.short.get(bench, 0) + 1
            for gram in dict.fromkeys(_ngrams(words, n)):
                self.grams.setdefault(gram, []).append((bench, pid))
        self.gram_set = frozenset(self.grams)
        self.short_queries = 0
        """Pool problems checked so far that were shorter than n words (exact rule only)."""

    @classmethod
    def from_benchmarks(cls, benchmarks: Sequence[str | BenchmarkSpec | dict], n: int = 8) -> BenchmarkIndex:
        """Load every set through ``skill_distill.eval_sets.load_benchmark`` (its data location rules apply)."""
        from skill_distill.eval_sets import load_benchmark, resolve_specs

        triples = []
        for spec in resolve_specs(list(benchmarks)):
            loaded = load_benchmark(spec)
            triples.extend((loaded.name, p.id, p.problem) for p in loaded.problems)
        return cls(triples, n)

    def hits(self, text: str) -> list[dict]:
        """One hit per benchmark the text overlaps: ``{"benchmark", "problem_id", "rule", "ngram"}`` (``ngram`` is
        the first shared n-gram, or the normalised text for an exact hit)."""
        norm = normalise(text)
        found: dict[str, dict] = {}
        for bench, pid in self.exact.get(norm, ()):
            found.setdefault(bench, {"benchmark": bench, "problem_id": pid, "rule": "exact", "ngram": norm})
        words = WORD.findall(norm)
        n = self.n
        if len(words) < n:
            self.short_queries += 1
            return list(found.values())
        shared = self.gram_set.intersection(_ngrams(words, n))  # set operations in C: most problems share none
        if shared:
            for gram in _ngrams(words, n):  # in text order: the first shared n-gram of each benchmark is reported
                if gram in shared:
                    for bench, pid in self.grams[gram]:
                        if bench not in found:
                            found[bench] = {"benchmark": bench, "problem_id": pid, "rule": "ngram",
                                            "ngram": " ".join(gram)}
        return list(found.values())


class HitCounter:
    """Counts of a decontamination pass, in the form written to stats, manifests and model cards."""

    def __init__(self, index: BenchmarkIndex, config: DecontaminationConfig):
        self.index, self.config = index, config
        self.checked = 0
        self.removed = 0
        self.by_benchmark: dict[str, int] = {}
        self.by_rule: dict[str, int] = {"exact": 0, "ngram": 0}

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
                "hits_by_rule": dict(self.by_rule), "short_exact_only": self.index.short_queries,
                "benchmark_problems_short": dict(self.index.short)}


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
    counter = HitCounter(BenchmarkIndex.from_benchmarks(config.benchmarks, config.n), config)
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
