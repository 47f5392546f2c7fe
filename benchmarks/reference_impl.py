"""Reference implementations of skill-based selection (docs/METHOD.md §4), for the tests and
``benchmarks/bench_selection.py`` only: written for clarity, not speed, so the fast production code in
``skill_distill.selection`` can be checked against them and the speed-up measured side by side.

- ``sample_by_skill_literal``: the method's literal loop (pick a leaf by weight, one of its examples uniformly,
  repeat until enough unique examples), the distribution ``selection.sampling._sample_by_skill`` samples in one pass.
- ``forced_distribution_naive``: greedy L2 matching scoring every candidate's histogram in Python, the picks
  ``selection.forced._forced_distribution`` makes vectorised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from skill_distill.selection import TIE_TOLERANCE


def sample_by_skill_literal(members_by_leaf: Mapping[int, Sequence[int]], weights: Mapping[int, float], quota: int,
                            rng: np.random.Generator) -> list[tuple[int, int]]:
    """Reference: the literal loop of the method (pick a leaf by weight, then one of its examples uniformly,
    repeat draws of already-chosen examples; exhausted leaves drop out). Reference for the tests and the benchmark."""
    leaves = [leaf for leaf in members_by_leaf if weights.get(leaf, 0) > 0 and members_by_leaf[leaf]]
    chosen: dict[int, int] = {}
    while len(chosen) < quota and leaves:
        w = np.array([weights[leaf] for leaf in leaves])
        leaf = leaves[int(rng.choice(len(leaves), p=w / w.sum()))]
        examples = members_by_leaf[leaf]
        e = int(examples[int(rng.integers(len(examples)))])
        if e not in chosen:
            chosen[e] = leaf
        leaves = [leaf for leaf in leaves if any(x not in chosen for x in members_by_leaf[leaf])]
    return list(chosen.items())


def forced_distribution_naive(X, target: np.ndarray, counts: np.ndarray, quota: int,
                              priority: np.ndarray) -> list[int]:
    """Reference for ``selection.forced._forced_distribution``: scores every candidate by building its normalised
    histogram (O(quota x rows x leaves) in Python). Same contract and tie rule."""
    X = X.tocsr()
    rows = [list(X.indices[X.indptr[j]: X.indptr[j + 1]]) for j in range(X.shape[0])]
    taken = [not r for r in rows]
    picks: list[int] = []
    for _ in range(quota):
        scores = []
        for j, row in enumerate(rows):
            if taken[j]:
                scores.append(math.inf)
                continue
            hist = [float(c) for c in counts]
            for leaf in row:
                hist[leaf] += 1
            total = sum(hist)
            scores.append(sum((h / total - t) ** 2 for h, t in zip(hist, target, strict=True)))
        best = min(scores)
        if best == math.inf:
            break
        tied = [j for j, sc in enumerate(scores) if sc <= best + TIE_TOLERANCE]
        j = min(tied, key=lambda k: priority[k])
        picks.append(j)
        taken[j] = True
        for leaf in rows[j]:
            counts[leaf] += 1
    return picks
