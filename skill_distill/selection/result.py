"""What a selection returns (docs/METHOD.md §4): the ids, their drawn leaves and the leaf distributions."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from skill_distill.selection.config import SelectionConfig
from skill_distill.selection.pool_index import _Pool
from skill_distill.skill_tree import Chain


@dataclass
class SelectionResult:
    """A selection and what it looks like per leaf skill. Distributions are ``{leaf chain: share}``."""

    strategy: str
    budget: int
    ids: list[str]
    """Selected ids, in selection order."""
    drawn_leaf: dict[str, Chain | None]
    """Per selected id, the leaf it was drawn through (random/difficulty/all: its first chain's leaf, or None)."""
    leaves: list[Chain]
    """Leaves of the tree selection worked on (the cut tree with ``max_depth``), in tree order."""
    leaf_weights: dict[Chain, float] = field(default_factory=dict)
    """w(s) of every leaf with a judged example (empty without a profile)."""
    target: dict[Chain, float] = field(default_factory=dict)
    """skill: the normalised weights over the leaves that can be drawn; other strategies: empty."""
    achieved: dict[Chain, float] = field(default_factory=dict)
    """Shares of the selected examples' drawn leaves."""
    achieved_all_chains: dict[Chain, float] = field(default_factory=dict)
    """Normalised histogram where each selected example adds 1 to each of its distinct leaves."""
    pool: dict[Chain, float] = field(default_factory=dict)
    """The same all-chains histogram over the whole pool."""
    pool_counts: dict[Chain, int] = field(default_factory=dict)
    """Pool examples having each leaf."""
    accuracy: dict[Chain, float] = field(default_factory=dict)
    """Student accuracy of every node of the working tree found in the profile (leaves and internal nodes)."""
    judged: dict[Chain, int] = field(default_factory=dict)
    pool_size: int = 0
    eligible: int = 0
    """Examples the strategy could have picked (after filters)."""
    notes: list[str] = field(default_factory=list)

    def divergence(self, all_chains: bool = False) -> dict[str, float]:
        """Distance of the achieved leaf distribution to the target: ``{"tv", "kl"}`` (nan without a target)."""
        return distribution_divergence(self.achieved_all_chains if all_chains else self.achieved, self.target)


def distribution_divergence(achieved: Mapping[Chain, float], target: Mapping[Chain, float]) -> dict[str, float]:
    """Total variation (half the L1 distance) and KL(achieved || target); KL is inf if achieved has mass where the
    target has none, and both are nan when either side is empty."""
    if not achieved or not target:
        return {"tv": math.nan, "kl": math.nan}
    keys = sorted(set(achieved) | set(target))  # a fixed order: the sum (and the manifest's bytes) never depend on
    tv = 0.5 * math.fsum(abs(achieved.get(k, 0.0) - target.get(k, 0.0)) for k in keys)  # the string hash seed
    kl = 0.0
    for k, p in achieved.items():
        if p > 0:
            q = target.get(k, 0.0)
            kl = math.inf if q <= 0 else kl + p * math.log(p / q)
    return {"tv": float(tv), "kl": float(kl)}


def _normalise(counts: np.ndarray, leaves: list[Chain]) -> dict[Chain, float]:
    total = counts.sum()
    return {} if total == 0 else {leaves[i]: float(counts[i] / total) for i in np.flatnonzero(counts)}


def _result(config: SelectionConfig, pool: _Pool, drawn: list[tuple[int, int | None]], accuracy: dict[Chain, float],
            judged: dict[Chain, int], leaf_weights: dict[Chain, float], target: dict[Chain, float], eligible: int,
            notes: list[str]) -> SelectionResult:
    X = pool.matrix()
    pool_counts = np.asarray(X.sum(axis=0)).ravel()
    chosen_counts = np.asarray(X[[e for e, _ in drawn]].sum(axis=0)).ravel()
    drawn_counts = np.bincount([leaf for _, leaf in drawn if leaf is not None], minlength=len(pool.leaves))
    return SelectionResult(
        strategy=config.strategy, budget=config.budget,
        ids=[pool.ids[e] for e, _ in drawn],
        drawn_leaf={pool.ids[e]: (None if leaf is None else pool.leaves[leaf]) for e, leaf in drawn},
        leaves=list(pool.leaves), leaf_weights=leaf_weights, target=target,
        achieved=_normalise(drawn_counts, pool.leaves), achieved_all_chains=_normalise(chosen_counts, pool.leaves),
        pool=_normalise(pool_counts, pool.leaves),
        pool_counts={pool.leaves[i]: int(pool_counts[i]) for i in np.flatnonzero(pool_counts)},
        accuracy=accuracy, judged=judged, pool_size=len(pool.ids), eligible=eligible, notes=notes)
