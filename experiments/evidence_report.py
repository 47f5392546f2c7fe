"""The third round's statistics and report (issue 25), declared in configs/experiments/evidence_round3.yaml before
the run: per arm, the mean paired difference against random over seeds and problems with a 95% interval from a
two-level bootstrap (seeds, then problems within leaf), a verdict from that interval alone, the smallest effect
the design detects; per leaf, accuracies and selection shares; the Spearman correlation of share change against
accuracy change; the label accuracy of the written skill block. ``write_report`` writes
results/evidence/README.md whatever the outcome."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

Z_POWER = 1.96 + 0.84
"""Smallest detectable effect = this x the bootstrap standard error: 5% two-sided test at 80% power."""
ON_POLICY_CONTRASTS = {"on-policy, skill prompts against uniform": ("on_policy_skill", "on_policy"),
                       "on-policy against SFT, skill prompts": ("on_policy_skill", "skill")}
"""Paired contrasts of the on-policy arms (declared 2026-12-06, before any on-policy arm ran): skill-weighted against
uniform prompts, and on-policy distillation against SFT on the same selected prompts (the skill arm's selection)."""
ON_POLICY_AGAINST_SFT = "on-policy against SFT, skill prompts"
ON_POLICY_ARMS = ("on_policy", "on_policy_skill")
"""The on-policy arms: uniform prompts from the random selection, and prompts drawn by the skill weights."""
BELOW_RANDOM_POINTS = 10.0
"""A leaf whose accuracy in an arm is more than this many points below random is listed."""


def verdict(ci_low: float, ci_high: float) -> str:
    """The declared rule: "beats random" only if the lower bound is above 0, "worse" only if the upper bound is
    below 0, otherwise "not separable"."""
    if ci_low > 0:
        return "beats random"
    if ci_high < 0:
        return "worse"
    return "not separable"


def two_level_bootstrap(diffs: np.ndarray, strata: np.ndarray, resamples: int = 2000, seed: int = 12345
                        ) -> np.ndarray:
    """Bootstrap distribution of the mean paired difference. ``diffs``: (seeds, problems), one row per seed;
    ``strata``: each problem's leaf. Each resample draws the seeds with replacement, then, for every drawn seed,
    the problems with replacement within each leaf (leaves keep their sizes); the statistic is the mean over the
    drawn seeds of the mean over the drawn problems."""
    diffs = np.asarray(diffs, dtype=float)
    n_seeds, n_problems = diffs.shape
    rng = np.random.default_rng(seed)
    seed_draw = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    problem_draw = np.empty((resamples, n_seeds, n_problems), dtype=np.int64)
    start = 0
    for leaf in np.unique(strata):  # problems regrouped by leaf; the mean ignores the order
        members = np.flatnonzero(strata == leaf)
        problem_draw[:, :, start:start + len(members)] = members[rng.integers(0, len(members),
                                                                              size=(resamples, n_seeds, len(members)))]
        start += len(members)
    picked = diffs[seed_draw[:, :, None], problem_draw]
    return picked.mean(axis=(1, 2))


def effect(diffs: np.ndarray, strata: np.ndarray, resamples: int = 2000) -> dict:
    """The primary statistic of one arm: mean, 95% interval, verdict, standard error and smallest detectable
    effect (``Z_POWER`` standard errors)."""
    boot = two_level_bootstrap(diffs, strata, resamples)
    lo, hi = (float(x) for x in np.percentile(boot, [2.5, 97.5]))
    se = float(boot.std(ddof=1))
    return {"mean": float(np.mean(diffs)), "ci_low": lo, "ci_high": hi, "verdict": verdict(lo, hi), "se": se,
            "detectable": Z_POWER * se}


def label_accuracy(written: Mapping[str, Sequence[str] | None], attributed: Mapping[str, Sequence[str]]) -> dict:
    """How well a written skill block names the problem's attributed chains: ``exact`` = share of problems whose
    written set equals the attributed set, ``precision`` = share of written labels that are attributed, ``recall``
    = share of attributed chains written. Problems without a block count as writing nothing."""
    exact = n_written = n_right = n_attr = n_found = 0
    for pid, chains in attributed.items():
        truth = set(chains)
        said = set(written.get(pid) or ())
        exact += said == truth
        n_written += len(said)
        n_right += len(said & truth)
        n_attr += len(truth)
        n_found += len(said & truth)
    return {"exact": exact / max(len(attributed), 1), "precision": n_right / n_written if n_written else math.nan,
            "recall": n_found / max(n_attr, 1), "problems": len(attributed)}


def _mean_defined(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN (precision is undefined for a seed whose arm wrote no label)."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def per_leaf_accuracy(correct: np.ndarray, leaf_rows: Sequence[Sequence[int]], n_leaves: int) -> np.ndarray:
    """Accuracy per leaf; a problem counts under each of its leaves."""
    sums, counts = np.zeros(n_leaves), np.zeros(n_leaves)
    for v, leaves in zip(correct, leaf_rows, strict=True):
        for leaf in leaves:
            sums[leaf] += v
            counts[leaf] += 1
    return sums / np.maximum(counts, 1)


def analyse_round3(arms: Sequence[str], leaves: Sequence[str], heldout_ids: Sequence[str],
                   chains_of: Mapping[str, Sequence[str]], seeds: Sequence[int],
                   correct: Mapping[int, Mapping[str, Mapping[str, float]]],
                   written: Mapping[int, Mapping[str, Mapping[str, Sequence[str] | None]]],
                   shares: Mapping[int, Mapping[str, Sequence[float]]], distinct: Mapping[int, Mapping[str, int]],
                   contrasts: Mapping[str, tuple[str, str]], resamples: int = 2000,
                   labelled_arms: Sequence[str] = ()) -> dict:
    """Everything the report states about one regime. ``correct[seed][arm][id]`` (0/1), ``written[seed][arm][id]``
    (the skill block's chains or None), ``shares[seed][arm]`` (selection share per leaf, chains of every trained
    example counted), ``distinct[seed][arm]`` (distinct examples trained on). ``labelled_arms``: the arms trained
    to write a skill block (label accuracy is reported for them, and for any arm that wrote one). The stratum of a
    problem is its first chain's leaf."""
    from scipy.stats import spearmanr

    index = {leaf: k for k, leaf in enumerate(leaves)}
    leaf_rows = [[index[c] for c in chains_of[i]] for i in heldout_ids]
    strata = np.array([rows[0] for rows in leaf_rows])
    vec = {arm: np.array([[correct[s][arm].get(i, 0.0) for i in heldout_ids] for s in seeds]) for arm in arms}
    acc_leaf = {arm: np.mean([per_leaf_accuracy(v, leaf_rows, len(leaves)) for v in vec[arm]], axis=0)
                for arm in arms}
    share = {arm: np.mean([shares[s][arm] for s in seeds], axis=0) for arm in arms}
    out: dict = {"leaves": list(leaves), "heldout_problems": len(heldout_ids), "seeds": list(seeds),
                 "arms": {}, "contrasts": {},
                 "min_occurrences": int(min(np.bincount([k for r in leaf_rows for k in r], minlength=len(leaves))))}
    attributed = {i: chains_of[i] for i in heldout_ids}
    for arm in arms:
        entry = {"accuracy": float(vec[arm].mean()),
                 "accuracy_per_seed": [float(x) for x in vec[arm].mean(axis=1)],
                 "per_leaf": acc_leaf[arm].tolist(), "share": share[arm].tolist(),
                 "distinct_examples": [int(distinct[s][arm]) for s in seeds], "label_accuracy": None}
        if arm in labelled_arms or any(written[s][arm].get(i) for s in seeds for i in heldout_ids):
            per_seed = [label_accuracy(written[s][arm], attributed) for s in seeds]
            entry["label_accuracy"] = {k: _mean_defined([p[k] for p in per_seed]) for k in per_seed[0]}
        if arm != "random":
            entry["minus_random"] = effect(vec[arm] - vec["random"], strata, resamples)
            d_share = share[arm] - share["random"]
            d_acc = acc_leaf[arm] - acc_leaf["random"]
            if np.std(d_share) > 0 and np.std(d_acc) > 0:
                r = spearmanr(d_share, d_acc)
                entry["spearman_share_vs_gain"] = {"rho": float(r.statistic), "p": float(r.pvalue)}
            else:
                entry["spearman_share_vs_gain"] = None
            entry["leaves_10_below_random"] = [leaves[k] for k in np.flatnonzero(100 * d_acc < -BELOW_RANDOM_POINTS)]
        out["arms"][arm] = entry
    for name, (a, b) in contrasts.items():
        if a in vec and b in vec:
            out["contrasts"][name] = {"arms": [a, b], **effect(vec[a] - vec[b], strata, resamples)}
    ses = [e["minus_random"]["se"] for a, e in out["arms"].items() if a != "random"]
    out["detectable"] = Z_POWER * float(np.median(ses)) if ses else math.nan
    return out


def signed(mean: float, lo: float, hi: float) -> str:
    return f"{100 * mean:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def regime_section(name: str, title: str, r: dict, precheck_text: str, cost_text: str, results_dir: str,
                   results_file: str = "results.json") -> str:
    """One regime's part of the report: the table, the verdicts, the secondary statistics, the cost."""
    arms = list(r["arms"])
    seeds = ", ".join(map(str, r["seeds"]))
    teacher = r.get("teacher")
    teacher_text = ([f"Teacher of the on-policy arms: {teacher['base']} trained by SFT on all {teacher['examples']} "
                     f"pool problems, {teacher['epochs']} epoch(s); held-out accuracy "
                     f"{100 * teacher['accuracy']:.1f}%.", ""] if teacher else [])
    lines = [f"### Regime {name}: {title}", "", f"Pre-check: {precheck_text}.", "", *teacher_text,
             f"{r['heldout_problems']} held-out problems (every leaf in at least {r['min_occurrences']}); seeds "
             f"{seeds}. Accuracy in %, mean over seeds; difference against random in points with its 95% two-level "
             f"bootstrap interval (seeds, then problems within leaf).", "",
             "| arm | accuracy | per seed | - random | verdict | distinct examples | label exact / precision |",
             "|---|---|---|---|---|---|---|"]
    for arm in arms:
        e = r["arms"][arm]
        d = e.get("minus_random")
        lab = e["label_accuracy"]
        lines.append(f"| {arm} | {100 * e['accuracy']:.1f} | "
                     + " / ".join(f"{100 * x:.1f}" for x in e["accuracy_per_seed"])
                     + f" | {signed(d['mean'], d['ci_low'], d['ci_high']) if d else ''} | "
                     f"{d['verdict'] if d else ''} | {', '.join(map(str, sorted(set(e['distinct_examples']))))} | "
                     + (f"{100 * lab['exact']:.0f}% / " + ("no label written" if math.isnan(lab["precision"])
                                                             else f"{100 * lab['precision']:.0f}%")
                        if lab else "no block") + " |")
    for cname, c in r["contrasts"].items():
        lines.append(f"| {cname} ({c['arms'][0]} - {c['arms'][1]}) | | | "
                     f"{signed(c['mean'], c['ci_low'], c['ci_high'])} | {c['verdict'].replace('random', c['arms'][1])}"
                     " | | |")
    lines += ["", f"Smallest detectable effect (2.8 bootstrap standard errors, median over arms): "
                  f"{100 * r['detectable']:.1f} points.", ""]
    for arm in arms[1:]:
        e = r["arms"][arm]
        sp = e["spearman_share_vs_gain"]
        below = e["leaves_10_below_random"]
        lines.append(f"- {arm}: Spearman (share change vs accuracy change, {len(r['leaves'])} leaves) "
                     + (f"{sp['rho']:+.2f} (p = {sp['p']:.2f})" if sp else "undefined (no variation)")
                     + "; leaves more than 10 points below random: "
                     + (", ".join(x.split("->")[-1] for x in below) if below else "none") + ".")
    lines += ["", "Per leaf (mean over seeds): selection share and held-out accuracy (%), a problem counting for "
                  "each of its leaves.", "",
              "| leaf | " + " | ".join(f"share {a}" for a in arms) + " | " + " | ".join(arms) + " |",
              "|---|" + "---|" * (2 * len(arms))]
    for k, leaf in enumerate(r["leaves"]):
        lines.append(f"| {leaf.split('->')[-1]} | " + " | ".join(f"{100 * r['arms'][a]['share'][k]:.1f}" for a in arms)
                     + " | " + " | ".join(f"{100 * r['arms'][a]['per_leaf'][k]:.1f}" for a in arms) + " |")
    lines += ["", cost_text, f"Per-problem records: `{results_dir}/records/`; numbers: `{results_dir}/{results_file}`."]
    return "\n".join(lines)


# the selections the issue asks a user to choose between: the paper's T=1, its ablation T=0.5, the closed loop
SELECTION_CHOICES = (("skill", "T=1"), ("skill_t05", "T=0.5"), ("closed_loop", "the closed loop"))


def which_selection(minus_random: Mapping[str, dict]) -> str:
    """When to use T=1, T=0.5 or the closed loop, from each one's verdict against random (they are not compared
    with one another directly, so no order among them is claimed unless random separates them)."""
    present = [(arm, label) for arm, label in SELECTION_CHOICES if arm in minus_random]
    if len(present) < 2:
        return ""
    stated = []
    for arm, label in present:
        d = minus_random[arm]
        stated.append(f"{label} (`{arm}`) {signed(d['mean'], d['ci_low'], d['ci_high'])} ({d['verdict']})")
    wins = [(arm, label) for arm, label in present if minus_random[arm]["verdict"] == "beats random"]
    if wins:
        label = max(wins, key=lambda w: minus_random[w[0]]["mean"])[1]
        choice = f"use {label}, the largest gain of those that beat random. "
    else:
        choice = "none is shown better than random, so these measurements give no reason to prefer one. "
    return f"Choosing the selection, each against random: {', '.join(stated)}; {choice}"


def advice(results: Mapping[str, dict | None]) -> list[str]:
    """What a user should do, drawn only from the verdicts measured here."""
    lines = []
    for name, r in results.items():
        if r is None:
            lines.append(f"- Regime {name}: the pre-check failed, no arm was trained; nothing is advised from it.")
            continue
        v = {a: e["minus_random"] for a, e in r["arms"].items() if a != "random"}
        wins = [a for a, d in v.items() if d["verdict"] == "beats random"]
        worse = [a for a, d in v.items() if d["verdict"] == "worse"]
        said = f"- Regime {name}: "
        if wins:
            best = max(wins, key=lambda a: v[a]["mean"])
            said += (f"{', '.join(wins)} beat random; the largest gain was `{best}` "
                     f"({signed(v[best]['mean'], v[best]['ci_low'], v[best]['ci_high'])} points). ")
        else:
            said += (f"no arm beat random (smallest detectable effect {100 * r['detectable']:.1f} points): keep "
                     "random selection at this scale. ")
        if worse:
            said += f"Worse than random: {', '.join(worse)}; do not use them in a setting like this one. "
        said += which_selection(v)
        for cname, c in r["contrasts"].items():
            if cname in ON_POLICY_CONTRASTS:
                continue  # said below
            against = c["verdict"].replace("random", c["arms"][1])
            said += (f"The skill-aware format {cname.removeprefix('format ')}: "
                     f"{signed(c['mean'], c['ci_low'], c['ci_high'])} points ({against}). ")
        lines.append(said.rstrip())
    # a regime's on-policy arms are analysed over the seeds that have them (``r["on_policy"]``, every arm), or with
    # the other arms when every seed has them
    on_policy = {name: r.get("on_policy", r) for name, r in results.items() if r}
    measured = {name: r for name, r in on_policy.items() if ON_POLICY_AGAINST_SFT in r["contrasts"]}
    if not measured:
        lines.append("- On-policy distillation with skill-weighted prompts against SFT on the same prompts: not "
                     "measured yet (its arms have not run).")
    for name, r in measured.items():
        c = r["contrasts"][ON_POLICY_AGAINST_SFT]
        a, b = c["arms"]
        verdict = c["verdict"].replace("random", b)
        use = {"beats random": "use it in a setting like this one",
               "worse": "keep SFT on those prompts in a setting like this one"}.get(
            c["verdict"], "neither is shown better here")
        said = (f"- On-policy distillation with skill-weighted prompts against SFT on the same prompts (regime "
                f"{name}, seeds {', '.join(map(str, r['seeds']))}, {a} - {b}): "
                f"{signed(c['mean'], c['ci_low'], c['ci_high'])} points ({verdict}): {use}.")
        prompts = r["contrasts"].get("on-policy, skill prompts against uniform")
        if prompts:
            said += (f" Skill-weighted against uniform prompts, both on-policy: "
                     f"{signed(prompts['mean'], prompts['ci_low'], prompts['ci_high'])} points "
                     f"({prompts['verdict'].replace('random', prompts['arms'][1])}).")
        against_random = [f"`{arm}` {signed(d['mean'], d['ci_low'], d['ci_high'])} ({d['verdict']})"
                          for arm in ON_POLICY_ARMS if (d := r["arms"].get(arm, {}).get("minus_random"))]
        if against_random:
            said += f" Each on-policy arm against random SFT: {', '.join(against_random)}."
        if r.get("teacher"):
            said += f" Its teacher scored {100 * r['teacher']['accuracy']:.1f}% held out."
        lines.append(said)
    return lines
