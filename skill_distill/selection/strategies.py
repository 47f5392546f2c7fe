"""``select`` (docs/METHOD.md §4): the shared preparation (pool index, profile, ``only_skill``, the seeded Generator),
then one function per strategy behind the ``STRATEGIES`` dispatch."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from skill_distill.io import DataError
from skill_distill.selection.config import SelectionConfig
from skill_distill.selection.filters import _correctness_groups, _difficulty_candidates, _per_leaf_portion_lists
from skill_distill.selection.forced import _select_forced
from skill_distill.selection.pool_index import _first_leaf, _index_pool, _Pool, _resolve_only_skill
from skill_distill.selection.result import SelectionResult, _result
from skill_distill.selection.sampling import _sample_by_skill, _sample_over_leaf_lists, _uniform_order
from skill_distill.selection.weights import leaf_weight
from skill_distill.skill_tree import Chain, SkillTree, format_chain

Drawn = list[tuple[int, int | None]]
"""(example index, drawn leaf index) in selection order."""


@dataclass
class SelectionProblem:
    """What every strategy works from, prepared once by ``select``."""

    config: SelectionConfig
    pool: _Pool
    work_tree: SkillTree | None
    rng: np.random.Generator
    in_pool: np.ndarray
    """Per example: passes ``only_skill`` (all True without it)."""
    allowed_leaf: np.ndarray
    """Per leaf: under ``only_skill`` (all True without it)."""
    weights: np.ndarray
    """w(s) per leaf, 0 for leaves without a judged example."""
    judged_leaf: np.ndarray
    node_accuracy: Mapping[Chain, float] | None
    correct_by_id: Mapping[str, float] | None
    pass_rate_by_id: Mapping[str, float | None] | None
    notes: list[str] = field(default_factory=list)


@dataclass
class StrategyOutcome:
    drawn: Drawn
    candidates: np.ndarray
    """The examples the strategy could have picked (after its filters)."""
    target: dict[Chain, float] = field(default_factory=dict)


def _ignores_correctness(p: SelectionProblem) -> None:
    if p.config.correctness != "any" or p.config.wrong_share is not None:
        p.notes.append(f"strategy {p.config.strategy!r} ignores the correctness filter")


def select_all(p: SelectionProblem) -> StrategyOutcome:
    """The whole pool (under ``only_skill``), in pool order."""
    candidates = np.flatnonzero(p.in_pool)
    drawn: Drawn = [(int(e), _first_leaf(p.pool, e, p.allowed_leaf)) for e in candidates]
    _ignores_correctness(p)
    return StrategyOutcome(drawn, candidates)


def select_by_difficulty(p: SelectionProblem) -> StrategyOutcome:
    """Uniform among the examples whose reference pass rate lies in ``difficulty_band``."""
    candidates = _difficulty_candidates(p.config, p.pool, p.pass_rate_by_id, p.in_pool, p.notes)
    order = _uniform_order(candidates, p.config.budget, p.rng)
    drawn: Drawn = [(int(e), _first_leaf(p.pool, e, p.allowed_leaf)) for e in order]
    _ignores_correctness(p)
    return StrategyOutcome(drawn, candidates)


def select_random(p: SelectionProblem) -> StrategyOutcome:
    """Uniform within each correctness group."""
    groups = _correctness_groups(p.config, p.pool, np.flatnonzero(p.in_pool), p.correct_by_id, p.notes)
    drawn: Drawn = []
    for _, members, quota in groups:
        drawn += [(int(e), _first_leaf(p.pool, e, p.allowed_leaf)) for e in _uniform_order(members, quota, p.rng)]
    candidates = np.concatenate([g[1] for g in groups]) if groups else np.array([], dtype=int)
    return StrategyOutcome(drawn, candidates)


def select_by_skill(p: SelectionProblem) -> StrategyOutcome:
    """Toward weak skills: the method's sampler, the per-leaf ``correct_portion`` variant, or forced distribution."""
    config, pool = p.config, p.pool
    n_leaves = len(pool.leaves)
    if p.node_accuracy is None:
        raise DataError("strategy 'skill' needs a student profile (profile.json from the profile stage); "
                        "pass profile=..., or use strategy 'random'")
    if not p.judged_leaf.any():
        raise DataError(f"no leaf of the skill tree {p.work_tree.source} has a judged example in the profile; "
                        "does the profile belong to this tree (and max_depth)?")
    unjudged = int((~p.judged_leaf).sum())
    if unjudged:
        cut = " (a cut node needs its own accuracy in the profile)" if config.max_depth is not None else ""
        p.notes.append(f"{unjudged} of {n_leaves} leaves have no judged example and are never drawn{cut}")
    drawable_leaf = p.judged_leaf & p.allowed_leaf & (p.weights > 0)
    has_drawable = np.array([any(drawable_leaf[c] for c in row) for row in pool.leaf_rows], dtype=bool)
    no_chain = sum(1 for row in pool.leaf_rows if not row)
    if no_chain:
        p.notes.append(f"{no_chain} pool examples have no skill chain and are never drawn")
    groups = _correctness_groups(config, pool, np.flatnonzero(p.in_pool & has_drawable), p.correct_by_id, p.notes)
    candidates = np.concatenate([g[1] for g in groups]) if groups else np.array([], dtype=int)
    if not len(candidates):
        under = f" under only_skill {config.only_skill!r}" if config.only_skill else ""
        raise DataError(f"no pool example has a judged leaf{under} and passes the correctness filter; "
                        "check that the attribution and the profile belong to this pool")
    active = np.zeros(n_leaves, dtype=bool)
    for e in candidates:
        for c in pool.leaf_rows[e]:
            active[c] |= drawable_leaf[c]
    target_vec = np.where(active, p.weights, 0.0)
    target_vec /= target_vec.sum()
    target = {pool.leaves[i]: float(target_vec[i]) for i in np.flatnonzero(active)}
    if config.correct_portion is not None:
        lists = _per_leaf_portion_lists(config.correct_portion, pool, candidates, np.flatnonzero(active),
                                        p.correct_by_id, p.rng)
        drawn = _sample_over_leaf_lists(lists, p.weights, config.budget, p.rng)
        p.notes.append(f"correct_portion {config.correct_portion}: {sum(map(len, lists.values()))} (leaf, example) "
                       "candidates after the per-leaf cut")
        # eligible means selectable: the examples that survive the cut, not those before it
        candidates = np.unique(np.concatenate(list(lists.values()))) if lists else np.array([], dtype=int)
    elif config.forced_distribution:
        drawn = _select_forced(pool, groups, np.flatnonzero(active), target_vec, p.rng)
    else:
        drawn = []
        for _, members, quota in groups:
            drawn += _sample_by_skill(pool, members, np.where(active, p.weights, 0.0), quota, p.rng)
    return StrategyOutcome(drawn, candidates, target)


STRATEGIES: dict[str, Callable[[SelectionProblem], StrategyOutcome]] = {
    "skill": select_by_skill, "random": select_random, "difficulty": select_by_difficulty, "all": select_all}
"""``SelectionConfig.strategy`` -> the function that selects with it."""


def select(config: SelectionConfig, ids: Sequence[str], chains_by_id: Mapping[str, Sequence[Sequence[str]]] | None,
           tree: SkillTree | None, node_accuracy: Mapping[Chain, float] | None = None,
           correct_by_id: Mapping[str, float] | None = None,
           pass_rate_by_id: Mapping[str, float | None] | None = None,
           judged_by_node: Mapping[Chain, int] | None = None, source: str | None = None,
           rng_seed: int | Sequence[int] | None = None) -> SelectionResult:
    """Select examples of the pool ``ids`` (in pool order) according to ``config``.

    ``chains_by_id``: root-excluded chains ending at leaves of ``tree`` (examples without chains are never drawn
    by ``skill``); ``node_accuracy``: the student's accuracy per tree node (internal nodes too, for
    ``max_depth``), leaves absent from it are never drawn; ``judged_by_node``: optional judged counts (a node with
    0 judged counts as absent); ``correct_by_id``: the student's mean correctness per example (for
    ``correctness``/``wrong_share``); ``pass_rate_by_id``: reference pass rates (for ``difficulty``); ``source``
    names the attribution in error messages; ``rng_seed`` replaces ``config.seed`` as the Generator's seed (epoch
    ``k`` of closed-loop re-selection draws with ``[seed, k]``). ``random``, ``difficulty`` and ``all`` also work
    without a tree
    and chains (None): the report then has no per-leaf view.

    Raises ConfigError for an invalid config, and DataError for: ``skill`` without a profile (or with one that
    judges no leaf of the tree); a chain naming a skill absent from the tree; an unknown ``only_skill`` (naming
    close matches); a correctness filter without verdicts; ``difficulty`` without pass rates; duplicate pool ids.
    """
    config.validate()
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise DataError(f"pool ids must be unique; {dup!r} appears more than once")
    if tree is None:
        if config.strategy == "skill" or config.only_skill is not None or config.max_depth is not None:
            raise DataError("selection with strategy 'skill', only_skill or max_depth needs a skill tree and an "
                            "attribution of the pool (tree=..., attribution=...)")
        work_tree, pool = None, _Pool(ids, [], [[] for _ in ids])
    else:
        work_tree = tree if config.max_depth is None else tree.cut(config.max_depth)
        pool = _index_pool(ids, chains_by_id or {}, tree, work_tree, config.max_depth, source)
    notes: list[str] = []
    n_leaves = len(pool.leaves)

    # the student profile over the working tree
    accuracy: dict[Chain, float] = {}
    judged: dict[Chain, int] = {}
    if node_accuracy is not None and work_tree is not None:
        for chain in work_tree.all_chains():
            if judged_by_node is not None:
                judged[chain] = int(judged_by_node.get(chain, 0))
            acc = node_accuracy.get(chain)
            if acc is None or (isinstance(acc, float) and math.isnan(acc)):
                continue
            if judged_by_node is not None and judged[chain] == 0:
                continue
            accuracy[chain] = float(acc)
    weights = np.zeros(n_leaves)
    judged_leaf = np.zeros(n_leaves, dtype=bool)
    for i, leaf in enumerate(pool.leaves):
        if leaf in accuracy:
            judged_leaf[i] = True
            weights[i] = leaf_weight(accuracy[leaf], config.w_max, config.temperature)
    leaf_weights = {pool.leaves[i]: float(weights[i]) for i in np.flatnonzero(judged_leaf)}

    # only one skill: a node of the working tree; examples must pass through it
    allowed_leaf = np.ones(n_leaves, dtype=bool)
    in_pool = np.ones(len(ids), dtype=bool)
    if config.only_skill is not None and work_tree is not None:
        node = _resolve_only_skill(config.only_skill, work_tree)
        allowed_leaf = np.array([leaf[: len(node)] == node for leaf in pool.leaves])
        in_pool = np.array([any(allowed_leaf[c] for c in row) for row in pool.leaf_rows], dtype=bool)
        notes.append(f"only_skill {format_chain(node)!r}: {int(in_pool.sum())} pool examples pass through it")

    rng = np.random.default_rng(config.seed if rng_seed is None else rng_seed)
    problem = SelectionProblem(config, pool, work_tree, rng, in_pool, allowed_leaf, weights, judged_leaf,
                               node_accuracy, correct_by_id, pass_rate_by_id, notes)
    outcome = STRATEGIES[config.strategy](problem)
    candidates = outcome.candidates
    if config.strategy != "all" and len(candidates) <= config.budget:
        notes.append(f"only {len(candidates)} eligible examples for a budget of {config.budget}: all of them selected")
    return _result(config, pool, outcome.drawn, accuracy, judged, leaf_weights, outcome.target, len(candidates), notes)
