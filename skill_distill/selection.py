"""Skill-based data selection (docs/METHOD.md §4): spend a training budget on the skills the student is weak at.

Weight of a leaf skill ``s``: ``w(s) = min(1/acc(s), w_max) ** T`` (``w_max ** T`` when ``acc(s) == 0``); leaves
without a judged example are never sampled. The method's sampler repeats { pick a leaf with probability
proportional to ``w``; pick one of that leaf's examples uniformly } until ``budget`` *unique* examples are chosen.

How this module samples exactly that distribution without the wasted repeat draws: a draw of example ``e`` in one
round has probability ``q(e) = sum over leaves l of e of w(l) / (W * n(l))`` (``n(l)``: the leaf's eligible
examples, ``W``: total weight), and repeated draws are discarded, so the sequence of *new* examples is weighted
sampling without replacement with weights ``q``. That is done in one vectorised pass with exponential keys
(Efraimidis-Spirakis: ``key(e) = Exp(1) / q(e)``, take the smallest keys). Given that ``e`` was drawn, the leaf it
was drawn through has probability proportional to ``w(l) / n(l)`` over its leaves. Leaves whose examples are all
chosen drop out by themselves, and the loop cannot spin: a pool smaller than the budget is simply taken whole.
The literal loop, kept as the reference the tests and ``benchmarks/bench_selection.py`` compare against, lives in
``benchmarks/reference_impl.py``.

Variants (all in ``SelectionConfig``): keep only wrong / right examples or a fixed share of each; forced
distribution (greedy L2 matching of the selected leaf histogram to the target); a maximum tree depth; one skill
only; and the baselines ``random``, ``difficulty`` (reference pass rate in a band) and ``all``.

A selection is written as a *manifest* (ids, drawn leaves, weights, distributions, config and input fingerprints)
so that a resumed training run reuses it and refuses to continue if an input changed.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from skill_distill.io import ConfigError, DataError, read_json, read_jsonl, require_file, sha256_file, write_json
from skill_distill.profile_file import read_profile_nodes
from skill_distill.skill_tree import Chain, SkillTree, format_chain, parse_chain

Strategy = Literal["skill", "random", "difficulty", "all"]
Correctness = Literal["any", "wrong", "right"]
ProfileValue = Literal["accuracy", "accuracy_shrunk"]

MANIFEST_VERSION = 1
WRONG_BELOW = 0.5
"""An example counts as *wrong* when the student's mean correctness over its samples is below this
(with one sample per problem: the answer was wrong)."""
TIE_TOLERANCE = 1e-12
"""Forced distribution: scores (squared L2 distances, at most 2) this close to the best are ties."""


@dataclass
class SelectionConfig:
    """Which examples of the pool are trained on (docs/METHOD.md §4)."""

    strategy: Strategy = "skill"
    """skill: sample toward weak skills; random: uniform; difficulty: uniform among examples whose reference
    pass rate lies in ``difficulty_band``; all: the whole pool."""
    budget: int = 1000
    """Number of unique examples to select (ignored by ``all``)."""
    seed: int = 42
    """Seed of the numpy Generator: same seed and inputs give the same selection."""
    w_max: float = 1000.0
    """Cap of a leaf's inverse accuracy; a leaf with accuracy 0 gets ``w_max ** temperature``."""
    temperature: float = 1.0
    """The exponent T of ``w(s) = min(1/acc(s), w_max) ** T``: 0 samples leaves uniformly, larger T focuses
    harder on the weakest skills."""
    correctness: Correctness = "any"
    """any: right and wrong answers alike; wrong / right: keep only examples the student got wrong / right
    (needs the profile's verdicts). Applies to ``skill`` and ``random``."""
    wrong_share: float | None = None
    """A fixed share in [0, 1] of wrong examples, the rest right (needs verdicts; excludes ``correctness``).
    If one side runs out, the other fills the budget and a note says so."""
    correct_portion: float | None = None
    """skill only: the reference scripts' ``--correct_portion p`` (docs/METHOD.md, appendix): per leaf, before
    sampling, its candidates are cut to the largest subset with right : wrong = p : (1 - p), drawn at random; the
    leaf's weight is unchanged and the usual sampler runs over these lists (needs verdicts). Unlike the global
    ``wrong_share`` it balances within each leaf; the two exclude each other, and ``correctness``."""
    forced_distribution: bool = False
    """skill only: instead of sampling, greedily add the example that brings the selected leaf histogram closest
    (L2) to the target distribution (the normalised weights)."""
    max_depth: int | None = None
    """Cut the tree at this depth: chains are truncated and a cut node's accuracy comes from the profile."""
    only_skill: str | None = None
    """Select only examples of this skill (``"Topic->leaf"``, or an internal node such as ``"Topic"``)."""
    difficulty_band: tuple[float, float] = (0.25, 0.625)
    """Inclusive pass-rate band of the ``difficulty`` baseline."""
    profile_value: ProfileValue = "accuracy"
    """Which per-node value of the profile drives the weights (docs/METHOD.md §3-4): ``accuracy`` (the paper's raw
    correct / judged) or ``accuracy_shrunk`` (pulled toward the parent's, robust for leaves with few judged
    problems; needs a profile built with ``shrinkage > 0``)."""

    def validate(self) -> None:
        """Raise ConfigError (one line naming the field and what is accepted) for an impossible setting."""
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"selection.{name}={getattr(self, name)!r}: {why}")

        if self.strategy not in ("skill", "random", "difficulty", "all"):
            raise bad("strategy", "choose one of skill, random, difficulty, all")
        if self.budget < 1:
            raise bad("budget", "must be at least 1")
        if not self.w_max > 0:
            raise bad("w_max", "must be positive")
        if self.temperature < 0:
            raise bad("temperature", "must be >= 0")
        if self.correctness not in ("any", "wrong", "right"):
            raise bad("correctness", "choose one of any, wrong, right")
        if self.wrong_share is not None:
            if not 0.0 <= self.wrong_share <= 1.0:
                raise bad("wrong_share", "must lie in [0, 1] (or null)")
            if self.correctness != "any":
                raise bad("wrong_share", "set either wrong_share or correctness, not both")
        if self.correct_portion is not None:
            if not 0.0 <= self.correct_portion <= 1.0:
                raise bad("correct_portion", "must lie in [0, 1] (or null)")
            if self.wrong_share is not None or self.correctness != "any":
                raise bad("correct_portion", "set one of correct_portion, wrong_share, correctness")
            if self.strategy != "skill" or self.forced_distribution:
                raise bad("correct_portion", "only applies to strategy 'skill' without forced_distribution")
        if self.max_depth is not None and self.max_depth < 1:
            raise bad("max_depth", "must be >= 1 (or null for the full tree)")
        lo, hi = self.difficulty_band
        if not 0.0 <= lo <= hi <= 1.0:
            raise bad("difficulty_band", "needs 0 <= low <= high <= 1")
        if self.forced_distribution and self.strategy != "skill":
            raise bad("forced_distribution", "only applies to strategy 'skill'")
        if self.profile_value not in ("accuracy", "accuracy_shrunk"):
            raise bad("profile_value", "choose one of accuracy, accuracy_shrunk")


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


def leaf_weight(accuracy: float, w_max: float = 1000.0, temperature: float = 1.0) -> float:
    """``w(s) = min(1/acc, w_max) ** T``, and ``w_max ** T`` at accuracy 0."""
    inv = w_max if accuracy <= 0 else min(1.0 / accuracy, w_max)
    return float(inv ** temperature)


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


# ---- degenerate weightings (docs/METHOD.md §4) -------------------------------------------------------------
DEGENERATE_LEAF_SHARE = 0.25
"""A leaf without a correct answer taking more than this share of the target distribution is degenerate."""
WARNING_MAX_NAMES = 8


def weighting_warning(target: Mapping[Chain, float], leaf_weights: Mapping[Chain, float],
                      raw_accuracy: Mapping[Chain, float], w_max: float, temperature: float) -> str | None:
    """One line when a weak student makes the weights degenerate, else None.

    Degenerate: a leaf with no correct answer (raw accuracy 0) gets more than ``DEGENERATE_LEAF_SHARE`` of the
    target distribution, or more than half of the judged leaves sit at the cap ``w_max ** T`` (the weights then
    no longer rank those leaves). ``T = 0`` is uniform by design and never warns about the cap. The line names the
    leaves and the options that soften the weighting.
    """
    def names(leaves: list[Chain]) -> str:
        shown = ", ".join(repr(format_chain(c)) for c in leaves[:WARNING_MAX_NAMES])
        return shown + (f" and {len(leaves) - WARNING_MAX_NAMES} more" if len(leaves) > WARNING_MAX_NAMES else "")

    problems = []
    heavy = sorted((c for c, share in target.items() if share > DEGENERATE_LEAF_SHARE and raw_accuracy.get(c) == 0),
                   key=lambda c: -target[c])
    if heavy:
        shares = ", ".join(f"{100 * target[c]:.0f}%" for c in heavy)
        problems.append(f"leaves with no correct answer take more than {100 * DEGENERATE_LEAF_SHARE:.0f}% of the "
                        f"target each ({names(heavy)}: {shares})")
    cap = leaf_weight(0.0, w_max, temperature)
    at_cap = [c for c, w in leaf_weights.items() if w >= cap * (1 - 1e-9)]
    if temperature > 0 and leaf_weights and len(at_cap) > len(leaf_weights) / 2:
        problems.append(f"{len(at_cap)} of {len(leaf_weights)} judged leaves sit at w_max ** T = {cap:g} "
                        f"({names(at_cap)})")
    if not problems:
        return None
    return ("degenerate skill weights: " + "; ".join(problems) + ". Options: selection.profile_value: "
            "accuracy_shrunk (profile with shrinkage > 0), a lower selection.w_max, selection.temperature below 1, "
            "or closed-loop re-selection (data.reselection)")


def profile_warning(leaf_accuracy: Mapping[Chain, float], config: SelectionConfig | None = None,
                    raw_accuracy: Mapping[Chain, float] | None = None) -> str | None:
    """``weighting_warning`` of the target a profile gives before any pool filter: every judged leaf, weighted
    with ``config`` (default: the paper's ``w_max`` and ``T``). For the profile stage, which knows no selection."""
    config = config or SelectionConfig()
    weights = {c: leaf_weight(a, config.w_max, config.temperature) for c, a in leaf_accuracy.items()}
    total = sum(weights.values())
    target = {c: w / total for c, w in weights.items()} if total > 0 else {}
    return weighting_warning(target, weights, leaf_accuracy if raw_accuracy is None else raw_accuracy,
                             config.w_max, config.temperature)


def result_warning(result: SelectionResult, config: SelectionConfig,
                   raw_accuracy: Mapping[Chain, float] | None = None) -> str | None:
    """``weighting_warning`` of a ``skill`` selection (None for other strategies). ``raw_accuracy`` defaults to
    the accuracies the selection used (pass the raw ones when ``profile_value`` is ``accuracy_shrunk``)."""
    if config.strategy != "skill" or not result.target:
        return None
    return weighting_warning(result.target, result.leaf_weights,
                             result.accuracy if raw_accuracy is None else raw_accuracy, config.w_max,
                             config.temperature)


# ---- the selection ------------------------------------------------------------------------------------------
@dataclass
class _Pool:
    """The pool as index arrays over the working tree's leaves."""

    ids: list[str]
    leaves: list[Chain]
    leaf_rows: list[list[int]]
    """Per example, the indices of its distinct (truncated) leaves, in chain order."""
    _matrix: object = None

    def matrix(self, columns: np.ndarray | None = None):
        """Binary CSR matrix (examples x leaves); ``columns`` keeps (and renumbers) only those leaves."""
        from scipy.sparse import csr_matrix

        if self._matrix is None:
            lengths = np.fromiter((len(r) for r in self.leaf_rows), dtype=np.int64, count=len(self.leaf_rows))
            indptr = np.concatenate([[0], np.cumsum(lengths)])
            indices = np.fromiter((c for r in self.leaf_rows for c in r), dtype=np.int64, count=int(indptr[-1]))
            self._matrix = csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(self.ids), len(self.leaves)))
        return self._matrix if columns is None else self._matrix[:, np.asarray(columns)].tocsr()


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
    drawn: list[tuple[int, int | None]]  # (example index, drawn leaf index)
    target: dict[Chain, float] = {}
    if config.strategy == "all":
        candidates = np.flatnonzero(in_pool)
        drawn = [(int(e), _first_leaf(pool, e, allowed_leaf)) for e in candidates]
        if config.correctness != "any" or config.wrong_share is not None:
            notes.append("strategy 'all' ignores the correctness filter")
    elif config.strategy == "difficulty":
        candidates = _difficulty_candidates(config, pool, pass_rate_by_id, in_pool, notes)
        order = _uniform_order(candidates, config.budget, rng)
        drawn = [(int(e), _first_leaf(pool, e, allowed_leaf)) for e in order]
        if config.correctness != "any" or config.wrong_share is not None:
            notes.append("strategy 'difficulty' ignores the correctness filter")
    elif config.strategy == "random":
        groups = _correctness_groups(config, pool, np.flatnonzero(in_pool), correct_by_id, notes)
        drawn = []
        for _, members, quota in groups:
            drawn += [(int(e), _first_leaf(pool, e, allowed_leaf)) for e in _uniform_order(members, quota, rng)]
        candidates = np.concatenate([g[1] for g in groups]) if groups else np.array([], dtype=int)
    else:  # skill
        if node_accuracy is None:
            raise DataError("strategy 'skill' needs a student profile (profile.json from the profile stage); "
                            "pass profile=..., or use strategy 'random'")
        if not judged_leaf.any():
            raise DataError(f"no leaf of the skill tree {work_tree.source} has a judged example in the profile; "
                            "does the profile belong to this tree (and max_depth)?")
        unjudged = int((~judged_leaf).sum())
        if unjudged:
            cut = " (a cut node needs its own accuracy in the profile)" if config.max_depth is not None else ""
            notes.append(f"{unjudged} of {n_leaves} leaves have no judged example and are never drawn{cut}")
        drawable_leaf = judged_leaf & allowed_leaf & (weights > 0)
        has_drawable = np.array([any(drawable_leaf[c] for c in row) for row in pool.leaf_rows], dtype=bool)
        no_chain = sum(1 for row in pool.leaf_rows if not row)
        if no_chain:
            notes.append(f"{no_chain} pool examples have no skill chain and are never drawn")
        groups = _correctness_groups(config, pool, np.flatnonzero(in_pool & has_drawable), correct_by_id, notes)
        candidates = np.concatenate([g[1] for g in groups]) if groups else np.array([], dtype=int)
        if not len(candidates):
            under = f" under only_skill {config.only_skill!r}" if config.only_skill else ""
            raise DataError(f"no pool example has a judged leaf{under} and passes the correctness filter; "
                            "check that the attribution and the profile belong to this pool")
        active = np.zeros(n_leaves, dtype=bool)
        for e in candidates:
            for c in pool.leaf_rows[e]:
                active[c] |= drawable_leaf[c]
        target_vec = np.where(active, weights, 0.0)
        target_vec /= target_vec.sum()
        target = {pool.leaves[i]: float(target_vec[i]) for i in np.flatnonzero(active)}
        if config.correct_portion is not None:
            lists = _per_leaf_portion_lists(config.correct_portion, pool, candidates, np.flatnonzero(active),
                                            correct_by_id, rng)
            drawn = _sample_over_leaf_lists(lists, weights, config.budget, rng)
            notes.append(f"correct_portion {config.correct_portion}: {sum(map(len, lists.values()))} (leaf, example) "
                         "candidates after the per-leaf cut")
        elif config.forced_distribution:
            drawn = _select_forced(pool, groups, np.flatnonzero(active), target_vec, rng)
        else:
            drawn = []
            for _, members, quota in groups:
                drawn += _sample_by_skill(pool, members, np.where(active, weights, 0.0), quota, rng)

    if config.strategy != "all" and len(candidates) <= config.budget:
        notes.append(f"only {len(candidates)} eligible examples for a budget of {config.budget}: all of them selected")
    return _result(config, pool, drawn, accuracy, judged, leaf_weights, target, len(candidates), notes)


def _index_pool(ids: list[str], chains_by_id: Mapping[str, Sequence[Sequence[str]]], tree: SkillTree,
                work_tree: SkillTree, max_depth: int | None, source: str | None) -> _Pool:
    leaves = list(work_tree.leaf_chains)
    leaf_index = {leaf: i for i, leaf in enumerate(leaves)}
    # each full-tree leaf -> its working-tree leaf index (the truncated chain with max_depth)
    column = {leaf: leaf_index[tree.truncate_chain(leaf, max_depth)] for leaf in tree.leaf_chains}
    rows: list[list[int]] = []
    prefix = f"{source}: " if source else ""
    for ex_id in ids:
        row: list[int] = []
        for chain in chains_by_id.get(ex_id, ()):
            chain = tuple(chain)
            i = column.get(chain)
            if i is None:  # builds the one-line error naming the unknown skill (or raises for an internal node)
                tree.validate_chain(chain, f"{prefix}example {ex_id!r}")
            if i not in row:
                row.append(i)
        rows.append(row)
    return _Pool(ids, leaves, rows)


def _resolve_only_skill(text: str, tree: SkillTree) -> Chain:
    node = parse_chain(text)
    if node and node in tree:
        return node
    names = [format_chain(c) for c in tree.all_chains()]
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
    by_leaf = [format_chain(c) for c in tree.all_chains() if node and c[-1] == node[-1]]
    suggestions = list(dict.fromkeys(by_leaf + close))[:3]
    hint = f"; close matches: {', '.join(repr(s) for s in suggestions)}" if suggestions else \
        f"; skills look like {names[0]!r}"
    raise DataError(f"selection.only_skill {text!r} is not a skill of the tree {tree.source}{hint}")


def _first_leaf(pool: _Pool, e: int, allowed_leaf: np.ndarray) -> int | None:
    for c in pool.leaf_rows[e]:
        if allowed_leaf[c]:
            return c
    return None


def _uniform_order(candidates: np.ndarray, quota: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded uniform sample of ``quota`` candidates without replacement, in draw order."""
    if quota <= 0 or not len(candidates):
        return np.array([], dtype=int)
    take = min(quota, len(candidates))
    return np.asarray(candidates)[rng.choice(len(candidates), size=take, replace=False)]


def _difficulty_candidates(config: SelectionConfig, pool: _Pool, pass_rate_by_id: Mapping[str, float | None] | None,
                           in_pool: np.ndarray, notes: list[str]) -> np.ndarray:
    lo, hi = config.difficulty_band
    rates = [None if pass_rate_by_id is None else pass_rate_by_id.get(i) for i in pool.ids]
    known = sum(r is not None for r in rates)
    if not known:
        raise DataError("strategy 'difficulty' needs reference pass rates, but no pool example has a pass_rate; "
                        "map one with the corpus field mapping (fields.pass_rate)")
    if known < len(rates):
        notes.append(f"{len(rates) - known} pool examples have no pass rate and are never drawn")
    band = [e for e, r in enumerate(rates) if r is not None and lo <= r <= hi and in_pool[e]]
    notes.append(f"{len(band)} pool examples have a pass rate in [{lo}, {hi}]")
    return np.asarray(band, dtype=int)


def _correctness_groups(config: SelectionConfig, pool: _Pool, members: np.ndarray,
                        correct_by_id: Mapping[str, float] | None,
                        notes: list[str]) -> list[tuple[str, np.ndarray, int]]:
    """Split eligible examples into (name, members, quota) groups following ``correctness`` / ``wrong_share``
    (``correct_portion``: one group of the examples with a verdict; the per-leaf cut comes later)."""
    if config.correctness == "any" and config.wrong_share is None and config.correct_portion is None:
        return [("any", members, config.budget)]
    field_name = ("correct_portion" if config.correct_portion is not None
                  else "correctness" if config.wrong_share is None else "wrong_share")
    if correct_by_id is None:
        raise DataError(f"selection.{field_name} needs the student's verdicts (verdicts.jsonl of the profile stage); "
                        "pass verdicts=..., or set correctness: any")
    score = [correct_by_id.get(pool.ids[e]) for e in members]
    unjudged = sum(s is None for s in score)
    if unjudged:
        notes.append(f"{unjudged} eligible examples have no verdict and are left out")
    wrong = np.asarray([e for e, s in zip(members, score, strict=True) if s is not None and s < WRONG_BELOW], dtype=int)
    right = np.asarray([e for e, s in zip(members, score, strict=True) if s is not None and s >= WRONG_BELOW],
                       dtype=int)
    if config.correct_portion is not None:
        return [("judged", np.sort(np.concatenate([wrong, right])).astype(int), config.budget)]
    if config.wrong_share is None:
        return [("wrong", wrong, config.budget)] if config.correctness == "wrong" else [("right", right, config.budget)]
    want_wrong = int(round(config.budget * config.wrong_share))
    want_right = config.budget - want_wrong
    # one side short: the other fills the budget, so the comparison with other strategies keeps its size
    if len(wrong) < want_wrong:
        notes.append(f"wrong_share {config.wrong_share} asks for {want_wrong} wrong examples but only {len(wrong)} "
                     "are eligible; right examples fill the rest")
        want_wrong, want_right = len(wrong), config.budget - len(wrong)
    elif len(right) < want_right:
        notes.append(f"wrong_share {config.wrong_share} asks for {want_right} right examples but only {len(right)} "
                     "are eligible; wrong examples fill the rest")
        want_right, want_wrong = len(right), config.budget - len(right)
    return [("wrong", wrong, want_wrong), ("right", right, want_right)]


def _per_leaf_portion_lists(portion: float, pool: _Pool, members: np.ndarray, leaves: np.ndarray,
                            correct_by_id: Mapping[str, float], rng: np.random.Generator) -> dict[int, np.ndarray]:
    """The reference's ``--correct_portion`` cut (``collect_leaf_node_with_wrong_items``): per leaf, the largest
    subset with right : wrong = p : (1 - p), ``n = min(#right / p, #wrong / (1 - p))`` (the infinite term dropped
    when p is 0 or 1), then ``int(n * p)`` right and ``int(n * (1 - p))`` wrong examples drawn at random."""
    by_leaf: dict[int, tuple[list[int], list[int]]] = {int(c): ([], []) for c in leaves}
    for e in members:
        right = correct_by_id[pool.ids[e]] >= WRONG_BELOW
        for c in pool.leaf_rows[e]:
            if c in by_leaf:
                by_leaf[c][0 if right else 1].append(int(e))
    out: dict[int, np.ndarray] = {}
    for c, (right, wrong) in by_leaf.items():
        terms = ([len(right) / portion] if portion > 0 else []) + ([len(wrong) / (1 - portion)] if portion < 1 else [])
        n = min(terms)
        keep_right, keep_wrong = int(n * portion), int(n * (1 - portion))
        kept = [*rng.permutation(right)[:keep_right], *rng.permutation(wrong)[:keep_wrong]]
        if kept:
            out[c] = np.asarray(sorted(int(e) for e in kept), dtype=int)
    return out


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


# ---- forced distribution --------------------------------------------------------------------------------------
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


# ---- result -----------------------------------------------------------------------------------------------
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


# ---- manifest -----------------------------------------------------------------------------------------------
def fingerprint_file(path: str | os.PathLike) -> str:
    """sha256 hex digest of the file's content, a pinned asset's included (raises DataError if it does not exist)."""
    from skill_distill.assets import resolve

    return sha256_file(require_file(resolve(str(path)), "input file"))


def _config_dict(config: SelectionConfig) -> dict:
    d = asdict(config)
    d["difficulty_band"] = list(d["difficulty_band"])
    # written only when not at their defaults, so manifests of the paper's settings keep their bytes (and manifests
    # written before these fields existed still resume); a missing key means the default
    for key, default in (("profile_value", "accuracy"), ("correct_portion", None)):
        if d[key] == default:
            del d[key]
    return d


def _chain_map(d: Mapping[Chain, float | int]) -> dict[str, float | int]:
    return {format_chain(k): v for k, v in d.items()}


def write_manifest(path: str | os.PathLike, result: SelectionResult, config: SelectionConfig,
                   fingerprints: Mapping[str, str], decontamination: Mapping | None = None) -> None:
    """Atomically write the selection manifest: selected ids (in order), drawn leaf per id, weights, target vs
    achieved leaf distributions, the config, the fingerprints of the inputs (``{"corpus": sha256, ...}``) and the
    pool's decontamination counts (``skill_distill.decontamination.read_counts``; None when the pool has none)."""
    write_json(path, {
        "version": MANIFEST_VERSION,
        "strategy": result.strategy,
        "budget": result.budget,
        "num_selected": len(result.ids),
        "pool_size": result.pool_size,
        "eligible": result.eligible,
        "ids": list(result.ids),
        "drawn_leaf": {i: (None if c is None else format_chain(c)) for i, c in result.drawn_leaf.items()},
        "leaf_weights": _chain_map(result.leaf_weights),
        "target": _chain_map(result.target),
        "achieved": _chain_map(result.achieved),
        "achieved_all_chains": _chain_map(result.achieved_all_chains),
        "pool": _chain_map(result.pool),
        "divergence": {k: (None if math.isnan(v) else v) for k, v in result.divergence().items()},
        "notes": list(result.notes),
        "config": _config_dict(config),
        "fingerprints": dict(fingerprints),
        # only when the pool was decontaminated (a pool without counts keeps the manifest's earlier bytes)
        **({} if decontamination is None else {"decontamination": dict(decontamination)}),
    })


def load_manifest(path: str | os.PathLike, expected_fingerprints: Mapping[str, str],
                  config: SelectionConfig) -> list[str]:
    """The selected ids of a manifest, if it was made from the same inputs and config.

    Raises DataError naming what changed since the selection (e.g. the corpus, attribution, profile, or
    config fields) and how to proceed.
    """
    manifest = read_json(path, "selection manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("ids"), list):
        raise DataError(f"{path}: not a selection manifest (no 'ids' list); delete it to select again")
    saved = manifest.get("fingerprints") or {}
    inputs = sorted(set(saved) | set(expected_fingerprints))
    changed = [k for k in inputs if saved.get(k) != expected_fingerprints.get(k)]
    saved_config = manifest.get("config") or {}
    now = _config_dict(config)
    changed_fields = [f"{k}: {saved_config.get(k)!r} -> {v!r}" for k, v in now.items() if saved_config.get(k) != v]
    changed_fields += [f"{k}: {v!r} -> default" for k, v in saved_config.items() if k not in now]
    if changed_fields:
        changed.append(f"config ({'; '.join(changed_fields)})")
    if changed:
        raise DataError(f"{path}: {', '.join(changed)} changed since this selection was made; delete the manifest "
                        "to select again, or use a new run directory")
    return [str(i) for i in manifest["ids"]]


# ---- reading the inputs from files --------------------------------------------------------------------------
@dataclass
class SelectionInputs:
    """Everything ``select`` needs, read from the pipeline's files, plus the files' fingerprints."""

    ids: list[str]
    chains_by_id: dict[str, list[Chain]]
    tree: SkillTree
    node_accuracy: dict[Chain, float] | None = None
    judged_by_node: dict[Chain, int] | None = None
    correct_by_id: dict[str, float] | None = None
    pass_rate_by_id: dict[str, float | None] | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    raw_accuracy: dict[Chain, float] | None = None
    """The profile's raw accuracies when ``node_accuracy`` holds another value (for ``result_warning``)."""

    def select(self, config: SelectionConfig) -> SelectionResult:
        return select(config, self.ids, self.chains_by_id, self.tree, node_accuracy=self.node_accuracy,
                      correct_by_id=self.correct_by_id, pass_rate_by_id=self.pass_rate_by_id,
                      judged_by_node=self.judged_by_node, source=self.source)


def load_selection_inputs(pool: str, tree: str, attribution: str, profile: str | None = None,
                          verdicts: str | None = None, display_names: str | None = None,
                          profile_value: ProfileValue = "accuracy") -> SelectionInputs:
    """Read the canonical pool JSONL, the tree, the attribution JSONL ({"id", "chains"}), optionally profile.json
    (``profile_value`` and judged counts of every node) and the profile's verdicts.jsonl (mean correctness per id).

    Raises DataError naming the file and row of a malformed input or a chain outside the tree.
    """
    from skill_distill.corpus import load_corpus
    from skill_distill.skill_stats import load_attribution

    skill_tree = SkillTree.load(tree, display_names)
    examples = load_corpus(pool, require_trace=False)
    inputs = SelectionInputs(
        ids=[e.id for e in examples], chains_by_id=load_attribution(attribution, skill_tree), tree=skill_tree,
        pass_rate_by_id={e.id: e.pass_rate for e in examples}, source=str(attribution),
        fingerprints={"corpus": fingerprint_file(pool), "tree": fingerprint_file(tree),
                      "attribution": fingerprint_file(attribution)})
    if profile is not None:
        inputs.node_accuracy, inputs.judged_by_node = read_profile_nodes(profile, skill_tree, profile_value)
        if profile_value != "accuracy":
            inputs.raw_accuracy, _ = read_profile_nodes(profile, skill_tree)
        inputs.fingerprints["profile"] = fingerprint_file(profile)
    if verdicts is not None:
        inputs.correct_by_id = read_mean_correctness(verdicts)
        inputs.fingerprints["verdicts"] = fingerprint_file(verdicts)
    return inputs


def read_mean_correctness(path: str | os.PathLike) -> dict[str, float]:
    """verdicts.jsonl rows ``{"id", "sample", "correct", ...}`` -> the mean correctness of each id."""
    totals: dict[str, list[float]] = {}
    for line, row in enumerate(read_jsonl(path, "verdicts file", allow_torn_tail=True), start=1):
        if "id" not in row or "correct" not in row:
            raise DataError(f"{path}:{line}: a verdict row needs 'id' and 'correct'")
        totals.setdefault(str(row["id"]), []).append(float(bool(row["correct"])))
    return {k: sum(v) / len(v) for k, v in totals.items()}

