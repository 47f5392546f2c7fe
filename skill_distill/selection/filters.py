"""Which pool examples a strategy may pick (docs/METHOD.md §4): the difficulty band, the correctness groups
(``correctness`` / ``wrong_share``) and the reference's per-leaf ``correct_portion`` cut."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from skill_distill.io import DataError
from skill_distill.selection.config import WRONG_BELOW, SelectionConfig
from skill_distill.selection.pool_index import _Pool


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
    """The reference's ``--correct_portion`` cut (``collect_leaf_node_with_wrong_items``), floors as it takes them:
    per leaf ``n = int(min(#right // p, #wrong // (1 - p)))`` (float floor division; the infinite term dropped when
    p is 0 or 1), then ``int(n * p)`` right and ``int(n * (1 - p))`` wrong examples drawn at random."""
    by_leaf: dict[int, tuple[list[int], list[int]]] = {int(c): ([], []) for c in leaves}
    for e in members:
        right = correct_by_id[pool.ids[e]] >= WRONG_BELOW
        for c in pool.leaf_rows[e]:
            if c in by_leaf:
                by_leaf[c][0 if right else 1].append(int(e))
    out: dict[int, np.ndarray] = {}
    for c, (right, wrong) in by_leaf.items():
        terms = [len(right) // portion] if portion > 0 else []
        terms += [len(wrong) // (1 - portion)] if portion < 1 else []
        n = int(min(terms))
        keep_right, keep_wrong = int(n * portion), int(n * (1 - portion))
        kept = [*rng.permutation(right)[:keep_right], *rng.permutation(wrong)[:keep_wrong]]
        if kept:
            out[c] = np.asarray(sorted(int(e) for e in kept), dtype=int)
    return out
