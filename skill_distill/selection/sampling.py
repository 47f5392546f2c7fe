"""The samplers the strategies share (docs/METHOD.md §4): the seeded uniform draw and the method's skill
sampler, over the pool matrix or over per-leaf candidate lists."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from skill_distill.selection.pool_index import _Pool


def _uniform_order(candidates: np.ndarray, quota: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded uniform sample of ``quota`` candidates without replacement, in draw order."""
    if quota <= 0 or not len(candidates):
        return np.array([], dtype=int)
    take = min(quota, len(candidates))
    return np.asarray(candidates)[rng.choice(len(candidates), size=take, replace=False)]


def _sample_over_leaf_lists(lists: Mapping[int, np.ndarray], weights: np.ndarray, quota: int,
                            rng: np.random.Generator) -> list[tuple[int, int]]:
    """The method's sampler (pick a leaf by weight, then one of *its list's* examples uniformly, until ``quota``
    unique examples) over per-leaf candidate lists, in one pass like ``_sample_by_skill``: example ``e`` is drawn
    in a round with probability ``sum over lists holding e of w(l) / len(list l)``."""
    mass: dict[int, float] = {}
    leaves_of: dict[int, list[tuple[int, float]]] = {}
    for c, members in lists.items():
        if weights[c] <= 0 or not len(members):
            continue
        share = float(weights[c]) / len(members)
        for e in members:
            mass[int(e)] = mass.get(int(e), 0.0) + share
            leaves_of.setdefault(int(e), []).append((c, share))
    examples = np.asarray(sorted(mass), dtype=int)
    if quota <= 0 or not len(examples):
        return []
    q = np.asarray([mass[e] for e in examples])
    keys = rng.exponential(size=len(examples)) / q
    order = np.argsort(keys, kind="stable")[:quota]
    picks: list[tuple[int, int]] = []
    for u, local in zip(rng.random(len(order)), order, strict=True):
        e = int(examples[local])
        cum = np.cumsum([m for _, m in leaves_of[e]])
        picks.append((e, leaves_of[e][int(np.searchsorted(cum, u * cum[-1], side="right"))][0]))
    return picks


def _sample_by_skill(pool: _Pool, members: np.ndarray, weights: np.ndarray, quota: int,
                     rng: np.random.Generator) -> list[tuple[int, int]]:
    """The method's sampler over ``members`` (see the module docstring): ``quota`` unique examples in draw order,
    each with the leaf it was drawn through. ``weights`` is 0 for leaves that cannot be drawn."""
    if quota <= 0 or not len(members):
        return []
    members = np.asarray(members)
    X = pool.matrix()[members]
    per_leaf = np.asarray(X.sum(axis=0)).ravel()  # eligible examples per leaf
    leaf_mass = np.divide(weights, per_leaf, out=np.zeros_like(weights), where=per_leaf > 0)
    q = X @ leaf_mass  # per-round draw probability of each example, up to the constant 1/W
    keys = np.full(len(members), np.inf)
    positive = q > 0
    keys[positive] = rng.exponential(size=int(positive.sum())) / q[positive]
    order = np.argsort(keys, kind="stable")[: min(quota, int(positive.sum()))]
    picks: list[tuple[int, int]] = []
    uniforms = rng.random(len(order))
    for u, local in zip(uniforms, order, strict=True):
        e = int(members[local])
        leaves = [c for c in pool.leaf_rows[e] if leaf_mass[c] > 0]
        mass = np.cumsum([leaf_mass[c] for c in leaves])
        picks.append((e, leaves[int(np.searchsorted(mass, u * mass[-1], side="right"))]))
    return picks
