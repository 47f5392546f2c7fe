"""Forced distribution (docs/METHOD.md §4): greedy L2 matching of the selected leaf histogram to the target."""

from __future__ import annotations

import numpy as np

from skill_distill.selection.config import TIE_TOLERANCE
from skill_distill.selection.pool_index import _Pool


def _select_forced(pool: _Pool, groups: list[tuple[str, np.ndarray, int]], active: np.ndarray,
                   target_vec: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Forced distribution over the active leaves; the histogram carries over from one correctness group to the
    next. The drawn leaf of a pick is its active leaf with the largest deficit (target minus share) before it."""
    X = pool.matrix(active)
    t = target_vec[active]
    priority = rng.permutation(len(pool.ids))  # seeded tie-break: lowest priority wins among equal scores
    counts = np.zeros(len(active))
    picks: list[tuple[int, int]] = []
    for _, members, quota in groups:
        members = np.asarray(members)
        if quota <= 0 or not len(members):
            continue
        before = counts.copy()
        local = _forced_distribution(X[members], t, counts, quota, priority[members])
        for j in local:
            cols = X.indices[X.indptr[members[j]]: X.indptr[members[j] + 1]]
            total = before.sum()
            share = before[cols] / total if total else np.zeros(len(cols))
            picks.append((int(members[j]), int(active[cols[int(np.argmax(t[cols] - share))]])))
            before[cols] += 1
    return picks


def _forced_distribution(X, target: np.ndarray, counts: np.ndarray, quota: int, priority: np.ndarray) -> list[int]:
    """Greedy forced distribution, vectorised: ``quota`` row indices of ``X`` in pick order.

    Histogram convention: each picked example adds 1 to every leaf of its row; the histogram is normalised before
    it is compared with ``target`` (squared L2). ``counts`` (the histogram so far) is updated in place. Rows
    without a leaf are never picked; ties (within TIE_TOLERANCE) go to the lowest ``priority``.

    Each pick costs one sparse mat-vec: with ``H`` the counts, ``S`` their sum, ``x`` a row (``s`` leaves) and
    ``m = S + s``, ``|(H + x)/m - t|^2 = (H.H + 2 x.H + s - 2m (H.t + x.t) + m^2 t.t) / m^2``, where only
    ``x.H`` changes between picks.
    """
    X = X.tocsr()
    s = np.asarray(X.sum(axis=1)).ravel()
    xt = X @ target
    tt = float(target @ target)
    available = s > 0
    picks: list[int] = []
    for _ in range(quota):
        if not available.any():
            break
        m = counts.sum() + s
        hh, ht = float(counts @ counts), float(counts @ target)
        numerator = hh + 2.0 * (X @ counts) + s - 2.0 * m * (ht + xt) + m * m * tt
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(available, numerator / (m * m), np.inf)
        tied = np.flatnonzero(score <= score.min() + TIE_TOLERANCE)
        j = int(tied[np.argmin(priority[tied])])
        picks.append(j)
        available[j] = False
        counts[X.indices[X.indptr[j]: X.indptr[j + 1]]] += 1
    return picks
