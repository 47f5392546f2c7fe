"""The selection's settings (docs/METHOD.md §4): ``SelectionConfig`` and its checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from skill_distill.io import ConfigError

Strategy = Literal["skill", "random", "difficulty", "all"]
Correctness = Literal["any", "wrong", "right"]
ProfileValue = Literal["accuracy", "accuracy_shrunk"]


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

    def __post_init__(self) -> None:
        self.validate()  # when the config is parsed, not when the selection first runs

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
