"""Closed-loop skill selection (docs/METHOD.md §3-4): re-select each epoch's examples from the student's current
per-skill accuracy instead of its accuracy before training.

The paper selects once, from the untrained student's profile. With ``data.reselection.every_n_epochs = N > 0``,
after every N-th epoch (not the last) the student answers a *profiling slice* (problems carved from the pool, kept
out of training), the new per-node counts are combined with the profile, and the next epoch's examples are drawn
with the same sampler (``skill_distill.selection.select``) from the updated weights, with seed
``(selection.seed, epoch)``. This module is the pure part (no Lightning, no generation): the slice, the update
rules and the draw. ``callbacks.reselection.ReselectionCallback`` runs it inside training.

Update rules (``update``), per node with new counts ``c'/j'`` and profile counts ``c/j``:

- ``replace``: the node's counts become ``c'/j'``;
- ``beta`` (default): the Beta posterior mean with the profile as a prior discounted by ``discount`` (default 0.5):
  ``(d c + c') / (d j + j')``; the discounted counts are the next prior, so old evidence fades geometrically;
- ``shrink``: ``replace``, then the profile stage's shrinkage toward the parent with ``shrinkage`` pseudo-counts
  (``SkillCounts.shrunk_accuracies``).

Nodes the slice does not judge keep their profile counts.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from skill_distill.corpus import Example
from skill_distill.io import ConfigError, DataError
from skill_distill.selection import SelectionConfig, SelectionResult, select
from skill_distill.skill_stats import SkillCounts, shrink_toward_parent
from skill_distill.skill_tree import Chain, SkillTree, format_chain

UpdateRule = Literal["replace", "beta", "shrink"]
Counts = dict[Chain, tuple[float, int]]
"""Per tree node: (correct, judged); ``correct`` may be fractional (discounted or mean over samples)."""


@dataclass
class ReselectionConfig:
    """Re-selecting each epoch's data from an updated profile (docs/METHOD.md §4). Off by default (the paper)."""

    every_n_epochs: int = 0
    """Re-profile and re-select after every N-th epoch (0: off, one selection for the whole run)."""
    per_leaf: int = 8
    """Profiling-slice problems carved from the pool per leaf (at most half of a leaf's eligible problems)."""
    seed: int = 0
    """Seed of the carving (problems are ranked by a seeded hash of their normalised text, not their id)."""
    slice: str | None = None
    """A profiling slice given as a file (corpus fields as ``data.fields``) instead of carving; refused if it shares
    a normalised problem with the pool, the held-out corpus or a test benchmark. Its chains come from
    ``data.attribution``."""
    update: UpdateRule = "beta"
    """How the new counts combine with the profile: replace, beta (discounted prior), shrink (toward the parent)."""
    discount: float = 0.5
    """beta: weight of the previous counts, in [0, 1] (0 is replace, 1 keeps all evidence)."""
    shrinkage: float = 20.0
    """shrink: pseudo-count strength toward the parent's accuracy."""
    keep_share: float = 0.0
    """Share in [0, 1) of the previous epoch's examples kept (drawn uniformly); the rest is a fresh budget from the
    eligible pool (0: a whole fresh budget)."""

    @property
    def enabled(self) -> bool:
        return self.every_n_epochs > 0

    def validate(self, selection: SelectionConfig, tree: str | None, attribution: str | None) -> None:
        """ConfigError (one line) for an impossible setting; re-selection needs strategy skill, a tree and an
        attribution."""
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"data.reselection.{name}={getattr(self, name)!r}: {why}")

        if self.every_n_epochs < 0:
            raise bad("every_n_epochs", "must be >= 0 (0: off)")
        if not self.enabled:
            return
        if self.per_leaf < 1:
            raise bad("per_leaf", "must be >= 1")
        if self.update not in ("replace", "beta", "shrink"):
            raise bad("update", "choose one of replace, beta, shrink")
        if not 0.0 <= self.discount <= 1.0:
            raise bad("discount", "must lie in [0, 1]")
        if self.shrinkage < 0:
            raise bad("shrinkage", "must be >= 0")
        if not 0.0 <= self.keep_share < 1.0:
            raise bad("keep_share", "must lie in [0, 1)")
        if selection.strategy != "skill":
            raise ConfigError(f"data.reselection.every_n_epochs={self.every_n_epochs} re-selects by skill weights: "
                              f"set data.selection.strategy: skill (got {selection.strategy!r}), or every_n_epochs: 0")
        if not (tree and attribution):
            raise ConfigError("data.reselection needs the skill tree and the pool's attribution to profile and "
                              "re-select by skill: set data.tree and data.attribution, or every_n_epochs: 0")


# ---- the profiling slice ------------------------------------------------------------------------------------
def normalise_problem(text: str) -> str:
    """The comparison key of a problem: NFKC, case-folded, whitespace collapsed (so a copy that differs only in
    spacing or case is the same problem)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _rank_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{text}".encode()).hexdigest()


def carve_slice(examples: Sequence[Example], chains_by_id: Mapping[str, Sequence[Chain]], tree: SkillTree,
                per_leaf: int, seed: int, exclude: set[str]) -> tuple[list[Example], list[str]]:
    """Carve the profiling slice from the pool: per leaf (tree order), up to ``per_leaf`` problems ranked by the
    seeded hash of their normalised text, never more than half of the leaf's candidates, never a problem whose
    normalised text is in ``exclude`` (held-out corpus, test benchmarks). A problem counts under its first chain's
    leaf. Returns the slice (pool order) and notes (leaves left without a slice problem keep their profile).
    """
    by_leaf: dict[Chain, dict[str, Example]] = {}
    for ex in examples:
        chains = chains_by_id.get(ex.id) or ()
        key = normalise_problem(ex.problem)
        if chains and key not in exclude:
            by_leaf.setdefault(tuple(chains[0]), {}).setdefault(key, ex)  # one copy per distinct text
    chosen: set[str] = set()
    notes: list[str] = []
    empty = []
    for leaf in tree.leaf_chains:
        candidates = by_leaf.get(leaf, {})
        take = min(per_leaf, len(candidates) // 2)
        if take == 0:
            if candidates:
                empty.append(format_chain(leaf))
            continue
        for key in sorted(candidates, key=lambda k: _rank_key(seed, k))[:take]:
            chosen.add(candidates[key].id)
    if empty:
        notes.append(f"{len(empty)} leaves have fewer than 2 eligible problems and no slice problem (their accuracy "
                     f"keeps the profile's): {', '.join(empty[:8])}{' ...' if len(empty) > 8 else ''}")
    return [ex for ex in examples if ex.id in chosen], notes


def check_slice(slice_examples: Sequence[Example], chains_by_id: Mapping[str, Sequence[Chain]], tree: SkillTree,
                pool: Sequence[Example], source: str, exclude: set[str]) -> None:
    """Refuse a profiling slice given as a file (DataError, one line): a problem without a skill chain, a problem
    shared (by normalised text) with the pool or ``exclude``, or trained leaves the slice has no problem of."""
    if not slice_examples:
        raise DataError(f"{source}: the profiling slice has no problem; give problems of the trained leaves")
    no_chain = [ex.id for ex in slice_examples if not chains_by_id.get(ex.id)]
    if no_chain:
        raise DataError(f"{source}: {len(no_chain)} profiling-slice problems have no skill chain in data.attribution "
                        f"(e.g. {no_chain[:3]}); attribute them with the pool or drop them")
    pool_texts = {normalise_problem(ex.problem): ex.id for ex in pool}
    for ex in slice_examples:
        key = normalise_problem(ex.problem)
        if key in pool_texts:
            raise DataError(f"{source}: profiling-slice problem {ex.id!r} is also in the training pool (as "
                            f"{pool_texts[key]!r}); a slice must be disjoint from the pool, remove it from one of them")
        if key in exclude:
            raise DataError(f"{source}: profiling-slice problem {ex.id!r} is also in the held-out corpus or a test "
                            "benchmark; remove it from the slice")
    covered = {tuple(c) for ex in slice_examples for c in chains_by_id[ex.id]}
    trained = {tuple(c) for ex in pool for c in chains_by_id.get(ex.id, ())}
    missing = sorted(format_chain(leaf) for leaf in trained - covered if leaf in tree)
    if missing:
        raise DataError(f"{source}: the profiling slice has no problem for {len(missing)} leaves the pool trains "
                        f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); add problems of those "
                        "leaves to the slice, or carve it from the pool (data.reselection.slice: null)")


# ---- profile updates ----------------------------------------------------------------------------------------
def counts_from_profile(node_accuracy: Mapping[Chain, float], judged: Mapping[Chain, int]) -> Counts:
    """(correct, judged) per node from a profile's accuracies and judged counts."""
    return {c: (float(a) * int(judged[c]), int(judged[c])) for c, a in node_accuracy.items() if judged.get(c)}


def slice_counts(verdicts: Mapping[str, Sequence[bool | float]], chains_by_id: Mapping[str, Sequence[Chain]]
                 ) -> SkillCounts:
    """The slice's per-node counts (an example counts once under each node of its chains, as in the profile)."""
    return SkillCounts.from_results(chains_by_id, verdicts)


def update_profile(prior: Counts, new: SkillCounts, rule: UpdateRule = "beta", discount: float = 0.5,
                   shrinkage: float = 20.0) -> tuple[Counts, dict[Chain, float]]:
    """Combine the slice's counts with the profile (see the module docstring). Returns the new counts (the prior
    of the next update) and the accuracy per node that drives the weights."""
    counts: Counts = dict(prior)
    fresh = {node: (new.correct(node), new.judged(node)) for node in new.nodes() if node}
    for node, (c, j) in fresh.items():
        if rule == "beta" and node in prior:
            pc, pj = prior[node]
            counts[node] = (discount * pc + c, discount * pj + j)
        else:
            counts[node] = (c, j)
    judged = {node: cj for node, cj in counts.items() if cj[1] > 0}
    if rule == "shrink":
        return counts, shrink_toward_parent(judged, shrinkage)
    return counts, {node: c / j for node, (c, j) in judged.items()}


# ---- re-selection of one epoch ------------------------------------------------------------------------------
def epoch_seed(config: SelectionConfig, epoch: int) -> int | list[int]:
    """The draw's seed: ``selection.seed`` for epoch 0 (today's selection exactly), ``[seed, epoch]`` after."""
    return config.seed if epoch == 0 else [config.seed, epoch]


def reselect(config: SelectionConfig, epoch: int, ids: Sequence[str], chains_by_id: Mapping[str, Sequence[Chain]],
             tree: SkillTree, node_accuracy: Mapping[Chain, float], judged: Mapping[Chain, int],
             need: int | None = None, accept: Callable[[list[str]], list[bool]] | None = None,
             previous: Sequence[str] | None = None, keep_share: float = 0.0, source: str | None = None
             ) -> tuple[SelectionResult, list[str]]:
    """Draw epoch ``epoch``'s examples from the eligible pool ``ids`` with the same sampler as the first selection.

    ``need``: examples the epoch must have after formatting (default ``config.budget``); ``accept`` tells which of
    the drawn ids survive formatting and tokenisation, and a dropped one is replaced by the next draw (the draw is
    repeated with a larger budget, whose order extends the smaller one's). ``previous``/``keep_share``: keep that
    share of the previous epoch's ids (uniformly, same seed) and draw the rest fresh. Returns the selection and
    the accepted ids (kept ones first, then the fresh draws in order). Raises DataError when the pool cannot
    provide ``need`` accepted examples.
    """
    need = config.budget if need is None else need
    kept: list[str] = []
    if previous and keep_share > 0:  # a stream of its own, so keep_share does not move the fresh draw
        rng = np.random.default_rng([config.seed, epoch, 1])
        k = min(len(previous), round(need * keep_share))
        kept = [previous[i] for i in sorted(rng.choice(len(previous), size=k, replace=False))]
    kept_set = set(kept)
    eligible = [i for i in ids if i not in kept_set]
    want = need - len(kept)
    budget = want
    while True:
        result = select(replace(config, budget=max(1, budget)), eligible, chains_by_id, tree,
                        node_accuracy=node_accuracy, judged_by_node=judged, source=source,
                        rng_seed=epoch_seed(config, epoch))
        drawn = list(result.ids)
        ok = accept(drawn) if accept is not None else [True] * len(drawn)
        accepted = [i for i, good in zip(drawn, ok, strict=True) if good]
        if len(accepted) >= want or len(drawn) < budget:
            break
        budget += want - len(accepted)
    if len(accepted) < want:
        raise DataError(f"epoch {epoch}: only {len(accepted)} of the {want} examples re-selection needs survive "
                        f"formatting ({len(eligible)} eligible); raise data.max_length or lower the budget")
    accepted = accepted[:want]
    keep = set(accepted)
    result.ids = [i for i in result.ids if i in keep]
    result.drawn_leaf = {i: result.drawn_leaf[i] for i in result.ids}
    return result, kept + accepted


def epoch_record(epoch: int, result: SelectionResult, ids: Sequence[str], accuracy: Mapping[Chain, float],
                 counts: Counts, config: SelectionConfig, reselection: ReselectionConfig, timings: Mapping | None
                 ) -> dict:
    """The JSON of ``selection/epoch=<k>.json``: the profile it came from, the weights, the target, the ids."""
    def chain_map(d: Mapping[Chain, object]) -> dict:
        return {format_chain(k): v for k, v in d.items()}

    return {"epoch": epoch, "ids": list(ids), "num_selected": len(ids),
            "drawn_leaf": {i: (None if c is None else format_chain(c)) for i, c in result.drawn_leaf.items()},
            "profile": {format_chain(c): {"accuracy": accuracy[c], "correct": counts[c][0], "judged": counts[c][1]}
                        for c in counts if c in accuracy},
            "leaf_weights": chain_map(result.leaf_weights), "target": chain_map(result.target),
            "achieved": chain_map(result.achieved), "strategy": result.strategy,
            "achieved_all_chains": chain_map(result.achieved_all_chains), "pool": chain_map(result.pool),
            "divergence": {k: (None if math.isnan(v) else v) for k, v in result.divergence().items()},
            "selection": {"seed": config.seed, "w_max": config.w_max, "temperature": config.temperature},
            "reselection": {"update": reselection.update, "discount": reselection.discount,
                            "shrinkage": reselection.shrinkage, "keep_share": reselection.keep_share},
            "timings": dict(timings or {}), "notes": list(result.notes)}


def plot_epochs(records: Sequence[Mapping], path, max_leaves: int = 12) -> None:
    """How the closed loop moved: per leaf, its target share and its profile accuracy at each re-selected epoch
    (``records``: the ``selection/epoch=<k>.json`` objects, epoch 0 = the manifest with its accuracies). The leaves
    with the largest share at any epoch are drawn. Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skill_distill.io import atomic_write

    epochs = [int(r["epoch"]) for r in records]
    leaves = sorted({c for r in records for c in r["target"]}, key=lambda c: -max(r["target"].get(c, 0.0)
                                                                                  for r in records))[:max_leaves]
    fig, (share_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for leaf in leaves:
        label = leaf if len(leaf) <= 40 else leaf[:37] + "..."
        share_ax.plot(epochs, [100 * r["target"].get(leaf, 0.0) for r in records], marker="o", label=label)
        acc_ax.plot(epochs, [(r["profile"].get(leaf) or {}).get("accuracy", math.nan) for r in records], marker="o")
    share_ax.set(xlabel="epoch", ylabel="target share (%)", title="leaf weights (normalised) per epoch")
    acc_ax.set(xlabel="epoch", ylabel="profile accuracy", title="the profile each epoch was drawn from")
    for ax in (share_ax, acc_ax):
        ax.set_xticks(epochs)
        ax.grid(linestyle=":", linewidth=0.5)
    share_ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
