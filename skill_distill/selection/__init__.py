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

The package, one module per concern: ``config`` (``SelectionConfig``), ``weights`` (leaf weights and the
degenerate-weighting warning), ``pool_index`` (the pool as leaf index arrays), ``filters`` (difficulty band,
correctness groups, the per-leaf ``correct_portion`` cut), ``sampling`` (the shared samplers), ``forced`` (forced
distribution), ``strategies`` (``select``: one function per strategy behind ``STRATEGIES``), ``result``,
``manifest`` and ``inputs`` (reading the pipeline's files). The public names are re-exported here.
"""

from skill_distill.profile_file import read_profile_nodes
from skill_distill.selection.config import (
    TIE_TOLERANCE,
    WRONG_BELOW,
    Correctness,
    ProfileValue,
    SelectionConfig,
    Strategy,
)
from skill_distill.selection.inputs import SelectionInputs, load_selection_inputs, read_mean_correctness
from skill_distill.selection.manifest import MANIFEST_VERSION, fingerprint_file, load_manifest, write_manifest
from skill_distill.selection.result import SelectionResult, distribution_divergence
from skill_distill.selection.strategies import STRATEGIES, select
from skill_distill.selection.weights import (
    DEGENERATE_LEAF_SHARE,
    leaf_weight,
    profile_warning,
    result_warning,
    weighting_warning,
)

__all__ = [
    "DEGENERATE_LEAF_SHARE", "MANIFEST_VERSION", "STRATEGIES", "TIE_TOLERANCE", "WRONG_BELOW", "Correctness",
    "ProfileValue", "SelectionConfig", "SelectionInputs", "SelectionResult", "Strategy", "distribution_divergence",
    "fingerprint_file", "leaf_weight", "load_manifest", "load_selection_inputs", "profile_warning",
    "read_mean_correctness", "read_profile_nodes", "result_warning", "select", "weighting_warning", "write_manifest",
]
