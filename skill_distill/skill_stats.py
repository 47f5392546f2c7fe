"""Per-skill aggregation shared by the student profile and by evaluation.

- ``load_attribution`` reads an attribution file (JSONL rows ``{"id": str, "chains": [[node, ...], ...]}``,
  root excluded, chains ending at leaves) and validates every chain against the tree.
- ``SkillCounts`` aggregates per-problem correctness over the tree: an example counts once under each node its
  chains pass through (leaves, internal nodes, and the root ``()``), however many of its chains share that node.
  With several samples per problem a problem contributes its mean correctness, and the per-problem means are
  kept so that intervals treat problems (not samples) as the unit.
- Intervals: Wilson score interval when every problem has one sample; a seeded, vectorised percentile
  bootstrap over problems otherwise.
- Optional shrinkage (not in the paper): ``acc = (correct + k * parent_acc) / (judged + k)``, applied top-down so
  ``parent_acc`` is the parent's shrunk accuracy; ``k = 0`` gives the raw accuracies (the paper).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from skill_distill.io import DataError, iter_jsonl
from skill_distill.skill_tree import Chain, SkillTree, format_chain

ROOT: Chain = ()


class Attribution(dict):
    """``{example id: [chain, ...]}`` (a plain dict) plus what loading found.

    Attributes: ``source`` (the file), ``rows`` (rows read), ``dropped_chains`` (chains not in the tree, dropped
    with ``on_unknown="drop"``), ``dropped_examples`` (ids that lost every chain that way).
    """

    source: str = ""
    rows: int = 0
    dropped_chains: int = 0
    dropped_examples: list[str]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dropped_examples = []

    def with_chains(self) -> int:
        """Number of examples that have at least one chain."""
        return sum(1 for chains in self.values() if chains)


def load_attribution(path: str | os.PathLike, tree: SkillTree | None, on_unknown: Literal["error", "drop"] = "error",
                     max_depth: int | None = None) -> Attribution:
    """Read an attribution JSONL file into ``{id: [chain, ...]}`` (an ``Attribution``, a dict with counts).

    Chains are validated with ``tree.validate_chain`` (``tree=None``: rows are checked, chains taken as written):
    with ``on_unknown="error"`` an unknown skill or a chain
    stopping at an internal node raises DataError naming the file and line; with ``"drop"`` such chains are
    counted and left out. ``max_depth`` first cuts every chain to that many nodes (pass the matching
    ``tree.cut(max_depth)``). Repeated chains of one example are kept once, in first-seen order.
    Raises DataError for a malformed row, a missing ``id``/``chains`` field or a duplicate id.
    """
    if on_unknown not in ("error", "drop"):
        raise ValueError(f"on_unknown must be 'error' or 'drop', got {on_unknown!r}")
    out = Attribution()
    out.source = str(path)
    for line, row in enumerate(iter_jsonl(path, "attribution file"), start=1):
        where = f"{path}:{line}"
        if "id" not in row:
            raise DataError(f"{where}: missing field 'id'; every attribution row needs the example id")
        ex_id = str(row["id"])
        if ex_id in out:
            raise DataError(f"{where}: duplicate id {ex_id!r}; each example must appear once")
        raw = row.get("chains")
        if not isinstance(raw, list):
            raise DataError(f"{where}: field 'chains' must be a list of chains (lists of skill names)")
        chains: list[Chain] = []
        dropped = 0
        for chain in raw:
            if not isinstance(chain, list) or not all(isinstance(x, str) for x in chain):
                raise DataError(f"{where}: each chain must be a list of skill names, got {chain!r}")
            if max_depth is not None:
                chain = chain[:max_depth]
            try:
                c = tree.validate_chain(chain, f"{where} (id {ex_id!r})") if tree is not None else tuple(chain)
            except DataError:
                if on_unknown == "error":
                    raise
                dropped += 1
                continue
            if c not in chains:
                chains.append(c)
        out[ex_id] = chains
        out.rows += 1
        out.dropped_chains += dropped
        if dropped and not chains:
            out.dropped_examples.append(ex_id)
    return out


def nodes_of(chains: Iterable[Sequence[str]]) -> set[Chain]:
    """Every node the chains pass through (each prefix, the leaves included), plus the root ``()``."""
    nodes: set[Chain] = {ROOT}
    for chain in chains:
        c = tuple(chain)
        for d in range(1, len(c) + 1):
            nodes.add(c[:d])
    return nodes


def wilson_interval(correct: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``correct`` successes out of ``n`` trials (scipy.stats); (0, 1) when ``n == 0``."""
    if n <= 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(int(round(correct)), n).proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, resamples: int = 1000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per problem): scipy.stats.bootstrap,
    seeded, vectorised, in blocks of at most ~4M indices (bounded memory even for a root with 100K problems).
    A single value, or identical values, give that value twice (scipy would return NaN for a degenerate sample)."""
    import numpy as np
    from scipy.stats import bootstrap

    v = np.asarray(values, dtype=np.float64)
    m = len(v)
    if m == 0:
        return 0.0, 1.0
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    block = max(1, min(resamples, 4_000_000 // m))
    res = bootstrap((v,), np.mean, n_resamples=resamples, batch=block, vectorized=True, confidence_level=confidence,
                    method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass
class NodeStats:
    chain: Chain
    correct: float
    """Sum over problems of their mean correctness (an integer count when one sample per problem)."""
    judged: int
    """Number of problems (not samples)."""
    samples: int
    accuracy: float
    ci_low: float
    ci_high: float
    accuracy_shrunk: float | None = None


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else round(x, 6)


def shrink_toward_parent(counts: Mapping[Chain, tuple[float, int]], strength: float) -> dict[Chain, float]:
    """``acc(node) = (correct + k * acc(parent)) / (judged + k)`` top-down over ``{node: (correct, judged)}``
    (nodes with judged > 0); a node whose parent is absent (the root) keeps its raw accuracy, so ``k = 0`` returns
    exactly the raw accuracies."""
    if strength < 0:
        raise ValueError(f"shrinkage strength must be >= 0, got {strength}")
    out: dict[Chain, float] = {}
    for node in sorted(counts, key=len):  # parents before children
        raw_correct, j = counts[node]
        if node == ROOT or node[:-1] not in out:
            out[node] = raw_correct / j
        else:
            out[node] = (raw_correct + strength * out[node[:-1]]) / (j + strength)
    return out


class SkillCounts:
    """Per-node correctness over a skill tree, with problems as the unit.

    Build with ``SkillCounts.from_results(chains_by_id, correctness_by_id)`` or ``add`` one problem at a time.
    Nodes are chains (tuples); the root is ``()``. A problem without chains counts only under the root.
    """

    def __init__(self) -> None:
        self._values: dict[Chain, dict[str, float]] = {}
        self._samples: dict[Chain, int] = {}

    @classmethod
    def from_results(cls, chains_by_id: Mapping[str, Sequence[Sequence[str]]],
                     correctness_by_id: Mapping[str, Sequence[bool | float]]) -> SkillCounts:
        """Aggregate every id of ``correctness_by_id`` (one bool/float per sample) under its chains (none if the id
        has no entry in ``chains_by_id``)."""
        counts = cls()
        for ex_id, samples in correctness_by_id.items():
            counts.add(ex_id, chains_by_id.get(ex_id, ()), samples)
        return counts

    def add(self, ex_id: str, chains: Sequence[Sequence[str]], samples: Sequence[bool | float]) -> None:
        """Record one problem: its mean correctness counts once under every node its chains pass through."""
        if not samples:
            raise ValueError(f"problem {ex_id!r} has no graded samples")
        mean = sum(float(s) for s in samples) / len(samples)
        for node in nodes_of(chains):
            per = self._values.setdefault(node, {})
            if ex_id in per:
                raise ValueError(f"problem {ex_id!r} was added twice")
            per[ex_id] = mean
            self._samples[node] = self._samples.get(node, 0) + len(samples)

    # ---- queries --------------------------------------------------------------------------------------
    def nodes(self) -> list[Chain]:
        """Nodes with at least one judged problem, root first, then depth-first in name order."""
        return sorted(self._values, key=lambda c: (c != ROOT, c))

    def __contains__(self, node: Sequence[str]) -> bool:
        return tuple(node) in self._values

    def problem_values(self, node: Sequence[str]) -> dict[str, float]:
        """Per-problem mean correctness under ``node`` (empty if none)."""
        return dict(self._values.get(tuple(node), {}))

    def judged(self, node: Sequence[str]) -> int:
        return len(self._values.get(tuple(node), {}))

    def correct(self, node: Sequence[str]) -> float:
        return float(sum(self._values.get(tuple(node), {}).values()))

    def samples(self, node: Sequence[str]) -> int:
        return self._samples.get(tuple(node), 0)

    def accuracy(self, node: Sequence[str]) -> float | None:
        j = self.judged(node)
        return self.correct(node) / j if j else None

    def interval(self, node: Sequence[str], confidence: float = 0.95, resamples: int = 1000,
                 seed: int = 0) -> tuple[float, float]:
        """Wilson interval when every problem under ``node`` has one sample, else a bootstrap over problems."""
        node = tuple(node)
        values = list(self._values.get(node, {}).values())
        if self.samples(node) == len(values):
            return wilson_interval(sum(values), len(values), confidence)
        return bootstrap_interval(values, confidence, resamples, seed)

    def shrunk_accuracies(self, strength: float) -> dict[Chain, float]:
        """Accuracies pulled toward the parent's (shrunk) accuracy with ``strength`` pseudo-counts
        (``shrink_toward_parent`` over this object's counts)."""
        return shrink_toward_parent({node: (self.correct(node), self.judged(node)) for node in self._values}, strength)

    def stats(self, confidence: float = 0.95, shrinkage: float = 0.0, resamples: int = 1000,
              seed: int = 0) -> list[NodeStats]:
        """One NodeStats per node (see ``nodes`` for the order); ``accuracy_shrunk`` set when ``shrinkage > 0``."""
        shrunk = self.shrunk_accuracies(shrinkage) if shrinkage > 0 else {}
        out = []
        for node in self.nodes():
            lo, hi = self.interval(node, confidence, resamples, seed)
            out.append(NodeStats(node, self.correct(node), self.judged(node), self.samples(node),
                                 self.correct(node) / self.judged(node), lo, hi, shrunk.get(node)))
        return out

    def rows(self, tree: SkillTree | None = None, confidence: float = 0.95, shrinkage: float = 0.0,
             resamples: int = 1000, seed: int = 0) -> list[dict]:
        """JSON-ready rows ``{"chain": "A->b", "depth", "is_leaf", "correct", "judged", "samples", "accuracy",
        "ci_low", "ci_high"[, "accuracy_shrunk"]}``; ``is_leaf`` comes from ``tree`` when given."""
        out = []
        for s in self.stats(confidence, shrinkage, resamples, seed):
            row = {"chain": format_chain(s.chain), "depth": len(s.chain),
                   "is_leaf": tree.is_leaf_chain(s.chain) if tree is not None else None,
                   "correct": _number(s.correct), "judged": s.judged, "samples": s.samples,
                   "accuracy": s.accuracy, "ci_low": s.ci_low, "ci_high": s.ci_high}
            if s.accuracy_shrunk is not None:
                row["accuracy_shrunk"] = s.accuracy_shrunk
            out.append(row)
        return out
