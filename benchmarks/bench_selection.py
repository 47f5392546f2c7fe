"""Benchmark of skill-based selection (docs/METHOD.md §4) at the paper's scale.

    .venv/bin/python benchmarks/bench_selection.py [--pool 100000] [--budget 1000] [--naive-pool 5000]

A synthetic attributed pool on the real skill_mix tree (118 leaves): each example has 1-3 leaves drawn with a
skewed (Zipf-like) leaf popularity, and every node gets a random student accuracy. Prints:
- wall time of ``skill`` sampling and of forced distribution for the budget, and of the literal
  repeat-until-new loop (the reference the sampler is equivalent to);
- TV (half L1) and KL(achieved || target) between the achieved and target leaf distributions, for the drawn-leaf
  histogram and the all-chains histogram;
- forced distribution, vectorised vs the naive per-candidate scoring, on a smaller pool (same picks checked),
  and the speed-up (target >= 50x).
Timings on shared machines are noisy; the ratio is measured side by side in one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse  # noqa: F401  (imported before timing: selection uses it)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reference_impl import forced_distribution_naive, sample_by_skill_literal
from skill_distill.selection import (
    SelectionConfig,
    distribution_divergence,
    leaf_weight,
    select,
)
from skill_distill.selection.forced import _forced_distribution
from skill_distill.selection.pool_index import _Pool
from skill_distill.skill_tree import SkillTree


def synthetic_pool(tree: SkillTree, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    leaves = tree.leaf_chains
    popularity = 1.0 / np.arange(1, len(leaves) + 1) ** 1.1
    popularity /= popularity.sum()
    ids = [f"ex{i:06d}" for i in range(n)]
    sizes = rng.integers(1, 4, size=n)
    draws = rng.choice(len(leaves), size=(n, 3), p=popularity)
    chains = {ex: [leaves[j] for j in dict.fromkeys(draws[i, : sizes[i]])] for i, ex in enumerate(ids)}
    accuracy = {c: float(rng.beta(2, 2)) for c in tree.all_chains()}
    return ids, chains, accuracy


def fmt(d: dict) -> str:
    return f"TV {d['tv']:.4f}  KL {d['kl']:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--naive-pool", type=int, default=5000)
    parser.add_argument("--naive-budget", type=int, default=100,
                        help="picks of the naive-vs-vectorised comparison (naive: ~pool x leaves work per pick)")
    parser.add_argument("--tree", default="asset:tree/skill_mix", help="a tree file or a pinned asset")
    args = parser.parse_args()

    tree = SkillTree.load(args.tree)
    ids, chains, accuracy = synthetic_pool(tree, args.pool)
    memberships = sum(len(c) for c in chains.values())
    print(f"pool: {args.pool:,} examples, {len(tree.leaf_chains)} leaves, {memberships / args.pool:.2f} leaves/example")

    t0 = time.perf_counter()
    sampled = select(SelectionConfig(budget=args.budget), ids, chains, tree, node_accuracy=accuracy)
    t_skill = time.perf_counter() - t0
    t0 = time.perf_counter()
    forced = select(SelectionConfig(budget=args.budget, forced_distribution=True), ids, chains, tree,
                    node_accuracy=accuracy)
    t_forced = time.perf_counter() - t0
    t0 = time.perf_counter()
    select(SelectionConfig(strategy="random", budget=args.budget), ids, chains, tree)
    t_random = time.perf_counter() - t0

    # the literal loop on the same pool (the reference distribution)
    leaf_index = {leaf: i for i, leaf in enumerate(tree.leaf_chains)}
    members: dict[int, list[int]] = {}
    for e, ex in enumerate(ids):
        for c in chains[ex]:
            members.setdefault(leaf_index[c], []).append(e)
    weights = {leaf_index[leaf]: leaf_weight(accuracy[leaf]) for leaf in tree.leaf_chains}
    t0 = time.perf_counter()
    literal = sample_by_skill_literal(members, weights, args.budget, np.random.default_rng(42))
    t_literal = time.perf_counter() - t0
    literal_hist = np.bincount([leaf for _, leaf in literal], minlength=len(tree.leaf_chains))
    literal_dist = {tree.leaf_chains[i]: c / literal_hist.sum() for i, c in enumerate(literal_hist) if c}

    print(f"\n== selection of {args.budget:,} from {args.pool:,} (wall time includes indexing the pool) ==")
    print(f"skill sampling          {t_skill:7.2f} s")
    print(f"forced distribution     {t_forced:7.2f} s")
    print(f"random baseline         {t_random:7.2f} s")
    print(f"literal loop (core only){t_literal:7.2f} s")
    print("\n== achieved vs target leaf distribution ==")
    print(f"skill sampling, drawn leaves       {fmt(sampled.divergence())}")
    print(f"skill sampling, all chains         {fmt(sampled.divergence(all_chains=True))}")
    print(f"literal loop, drawn leaves         {fmt(distribution_divergence(literal_dist, sampled.target))}")
    print(f"forced distribution, drawn leaves  {fmt(forced.divergence())}")
    print(f"forced distribution, all chains    {fmt(forced.divergence(all_chains=True))}")
    print(f"pool (all chains) vs target        {fmt(distribution_divergence(sampled.pool, sampled.target))}")

    # vectorised vs naive forced distribution on a smaller pool
    n_ids, n_chains, n_acc = synthetic_pool(tree, args.naive_pool, seed=1)
    small = _Pool(n_ids, list(tree.leaf_chains), [[leaf_index[c] for c in n_chains[ex]] for ex in n_ids])
    X = small.matrix()
    target = np.array([leaf_weight(n_acc[leaf]) for leaf in tree.leaf_chains])
    target /= target.sum()
    priority = np.random.default_rng(0).permutation(args.naive_pool)
    t0 = time.perf_counter()
    fast = _forced_distribution(X, target, np.zeros(len(target)), args.naive_budget, priority)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = forced_distribution_naive(X, target, np.zeros(len(target)), args.naive_budget, priority)
    t_naive = time.perf_counter() - t0
    print(f"\n== forced distribution: vectorised vs naive, pool {args.naive_pool:,}, {args.naive_budget} picks ==")
    print(f"vectorised  {t_fast:8.3f} s  ({1000 * t_fast / args.naive_budget:.2f} ms/pick)")
    print(f"naive       {t_naive:8.3f} s  ({1000 * t_naive / args.naive_budget:.2f} ms/pick)")
    print(f"speed-up    {t_naive / t_fast:8.1f}x  (target >= 50x); same picks: {fast == naive}")
    if fast != naive:
        raise SystemExit("vectorised and naive forced distribution disagree")


if __name__ == "__main__":
    main()
