"""Skill weights (docs/METHOD.md §4): ``w(s) = min(1/acc(s), w_max) ** T`` and the warning for degenerate
weightings."""

from __future__ import annotations

from collections.abc import Mapping

from skill_distill.selection.config import SelectionConfig
from skill_distill.selection.result import SelectionResult
from skill_distill.skill_tree import Chain, format_chain


def leaf_weight(accuracy: float, w_max: float = 1000.0, temperature: float = 1.0) -> float:
    """``w(s) = min(1/acc, w_max) ** T``, and ``w_max ** T`` at accuracy 0."""
    inv = w_max if accuracy <= 0 else min(1.0 / accuracy, w_max)
    return float(inv ** temperature)


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
