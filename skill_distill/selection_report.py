"""What a selection looks like per skill: markdown tables, a bar chart, and the ``select-report`` stage.

``python -m skill_distill select-report --config configs/pipeline/select_report_quickstart.yaml`` selects a
budget from the pool (docs/METHOD.md §4) and writes ``manifest.json`` (the selection, reusable by training),
``selection_report.md`` (per-leaf and per-topic tables) and ``selection_report.png`` (pool vs target vs selection
shares per leaf, grouped by topic).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from skill_distill.decontamination import read_counts
from skill_distill.io import DataError, atomic_write
from skill_distill.pool import STATS_FILE, read_pool_stats
from skill_distill.selection import (
    SelectionConfig,
    SelectionResult,
    load_selection_inputs,
    result_warning,
    write_manifest,
)
from skill_distill.skill_tree import Chain, SkillTree, format_chain

MAX_PLOTTED_LEAVES = 150


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _leaf_label(tree: SkillTree, leaf: Chain) -> str:
    return format_chain(tree.display(n) for n in leaf)


def _drawn_counts(result: SelectionResult) -> dict[Chain, int]:
    counts: dict[Chain, int] = {}
    for leaf in result.drawn_leaf.values():
        if leaf is not None:
            counts[leaf] = counts.get(leaf, 0) + 1
    return counts


def selection_table(result: SelectionResult, tree: SkillTree) -> str:
    """Markdown table, one row per leaf of the working tree (in tree order): pool count and share, target share,
    examples drawn through the leaf and their share, share in the all-chains histogram, student accuracy (judged
    count) and weight. "–" marks what does not apply (no profile, leaf never judged, no target)."""
    drawn = _drawn_counts(result)
    lines = ["| skill | pool | pool share | target | selected | achieved | all-chains | accuracy | weight |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for leaf in result.leaves:
        acc = result.accuracy.get(leaf)
        judged = result.judged.get(leaf)
        acc_text = _num(acc) + (f" ({judged})" if judged is not None and acc is not None else "")
        lines.append(
            f"| {_leaf_label(tree, leaf)} | {result.pool_counts.get(leaf, 0)} | {_pct(result.pool.get(leaf, 0.0))} "
            f"| {_pct(result.target.get(leaf)) if result.target else '–'} | {drawn.get(leaf, 0)} "
            f"| {_pct(result.achieved.get(leaf, 0.0))} | {_pct(result.achieved_all_chains.get(leaf, 0.0))} "
            f"| {acc_text} | {_num(result.leaf_weights.get(leaf))} |")
    return "\n".join(lines) + "\n"


def _topic_of(leaf: Chain) -> str:
    return leaf[0]


def topic_table(result: SelectionResult, tree: SkillTree) -> str:
    """Markdown table per topic (first level of the tree): summed leaf shares of pool, target and selection,
    examples drawn through the topic's leaves, and the topic's own accuracy from the profile."""
    topics: dict[str, dict[str, float]] = {}
    drawn = _drawn_counts(result)
    for leaf in result.leaves:
        row = topics.setdefault(_topic_of(leaf), {"leaves": 0, "pool": 0.0, "target": 0.0, "selected": 0,
                                                  "achieved": 0.0, "all": 0.0})
        row["leaves"] += 1
        row["pool"] += result.pool.get(leaf, 0.0)
        row["target"] += result.target.get(leaf, 0.0)
        row["selected"] += drawn.get(leaf, 0)
        row["achieved"] += result.achieved.get(leaf, 0.0)
        row["all"] += result.achieved_all_chains.get(leaf, 0.0)
    lines = ["| topic | leaves | pool share | target | selected | achieved | all-chains | accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for topic, row in topics.items():
        lines.append(
            f"| {tree.display(topic)} | {int(row['leaves'])} | {_pct(row['pool'])} "
            f"| {_pct(row['target']) if result.target else '–'} | {int(row['selected'])} | {_pct(row['achieved'])} "
            f"| {_pct(row['all'])} | {_num(result.accuracy.get((topic,)))} |")
    return "\n".join(lines) + "\n"


def plot_selection(result: SelectionResult, tree: SkillTree, path_png: str | os.PathLike,
                   max_leaves: int = MAX_PLOTTED_LEAVES) -> None:
    """Horizontal grouped bars per leaf: pool share, target share (skill strategies) and selection share (drawn
    leaves), leaves grouped by topic with topic headings. With more than ``max_leaves`` leaves only those with the
    largest shares are drawn (the title says so). Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    leaves = list(result.leaves)
    hidden = 0
    if len(leaves) > max_leaves:
        def top(leaf: Chain) -> float:
            return max(result.pool.get(leaf, 0.0), result.target.get(leaf, 0.0), result.achieved.get(leaf, 0.0))

        keep = set(sorted(leaves, key=top, reverse=True)[:max_leaves])
        hidden = len(leaves) - max_leaves
        leaves = [leaf for leaf in leaves if leaf in keep]

    series = [("pool", result.pool, "#9e9e9e")]
    if result.target:
        series.append(("target", result.target, "#1f77b4"))
    series.append(("selection", result.achieved, "#d62728"))
    bar = 0.8 / len(series)

    # y positions top-down, with a gap and a heading row between topics
    positions: list[float] = []
    headings: list[tuple[float, str]] = []
    y, previous = 0.0, None
    for leaf in leaves:
        if _topic_of(leaf) != previous:
            if previous is not None:
                y += 0.6
            headings.append((y, tree.display(_topic_of(leaf))))
            y += 1.0
            previous = _topic_of(leaf)
        positions.append(y)
        y += 1.0

    height = max(4.0, 0.22 * y + 1.5)
    fig, ax = plt.subplots(figsize=(11, height))
    for k, (name, dist, color) in enumerate(series):
        offsets = [p + (k - (len(series) - 1) / 2) * bar for p in positions]
        ax.barh(offsets, [100 * dist.get(leaf, 0.0) for leaf in leaves], height=bar, color=color, label=name)
    labels = [tree.display(leaf[-1]) if len(leaf) > 1 else tree.display(leaf[0]) for leaf in leaves]
    labels = [lab if len(lab) <= 48 else lab[:45] + "..." for lab in labels]
    ax.set_yticks(positions, labels, fontsize=7)
    for hy, topic in headings:
        ax.text(0.0, hy, topic, fontsize=9, fontweight="bold", va="center", ha="left",
                transform=ax.get_yaxis_transform())
        ax.axhline(hy + 0.5, color="#cccccc", linewidth=0.6)
    ax.set_ylim(y, -1.0)
    ax.set_xlabel("share of leaf assignments (%)")
    ax.grid(axis="x", linestyle=":", linewidth=0.5)
    title = (f"Selection: strategy={result.strategy}, budget={result.budget} "
             f"({len(result.ids)} of {result.pool_size} selected)")
    if hidden:
        title += f"\n{hidden} leaves with the smallest shares not shown"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path_png)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def truncation_table(tokens: Mapping) -> str:
    """The pool stage's trace-length counts (``pool_stats.json`` ``tokens``, docs/METHOD.md §6), as they were
    counted there: per training length, the pool traces longer than it and those whose final ``\\boxed{`` it cuts."""
    rows = tokens["rows"]
    lines = [f"Counted by the pool stage over its {rows} pool traces (tokenizer `{tokens.get('tokenizer')}`, prompt "
             f"included); {tokens['no_boxed']} have no `\\boxed{{`.", "",
             "| length (tokens) | traces longer | share | final answer cut off | share |", "|---|---|---|---|---|"]
    for length in sorted(tokens["over"], key=int):
        over, lost = tokens["over"][length], tokens["answer_lost"].get(length, 0)
        lines.append(f"| {int(length):,} | {over} | {_pct(over / rows if rows else None)} | {lost} | "
                     f"{_pct(lost / rows if rows else None)} |")
    return "\n".join(lines) + "\n"


def pool_token_stats(pool: str) -> Mapping | None:
    """The ``tokens`` block of the pool stage's stats beside ``pool``, or None (no stats file, or no tokenizer)."""
    stats = read_pool_stats(pool)
    tokens = stats.get("tokens") if isinstance(stats, dict) else None
    if tokens is None:
        return None
    if not (isinstance(tokens, dict) and isinstance(tokens.get("rows"), int)
            and isinstance(tokens.get("over"), dict) and isinstance(tokens.get("answer_lost"), dict)):
        raise DataError(f"{Path(pool).parent / STATS_FILE}: 'tokens' is not the pool stage's trace-length counts "
                        "(rows, no_boxed, over, answer_lost); rerun the pool stage or remove the file")
    return tokens


def report_markdown(result: SelectionResult, tree: SkillTree, config: SelectionConfig,
                    inputs: Mapping[str, str | None] | None = None, warning: str | None = None,
                    pool_tokens: Mapping | None = None) -> str:
    """The whole selection report: summary, degeneracy warning, notes, divergences, topic and leaf tables, and the
    pool stage's trace-length counts when given (``pool_tokens``)."""
    d_drawn, d_all = result.divergence(), result.divergence(all_chains=True)
    lines = [f"# Selection report: {result.strategy}, budget {result.budget}", ""]
    if inputs:
        lines += [f"- {k}: `{v}`" for k, v in inputs.items() if v]
    lines += [f"- selected {len(result.ids)} of {result.pool_size} pool examples ({result.eligible} eligible)",
              f"- config: `{asdict(config)}`"]
    if result.target:
        lines.append(f"- achieved vs target (drawn leaves): TV {_num(d_drawn['tv'])}, KL {_num(d_drawn['kl'])}; "
                     f"(all chains): TV {_num(d_all['tv'])}, KL {_num(d_all['kl'])}")
    if warning:
        lines.append(f"- **warning**: {warning}")
    lines += [f"- note: {n}" for n in result.notes]
    lines += ["", "Shares are of leaf assignments. *selected*/*achieved*: the leaf each example was drawn through; "
              "*all-chains*: every distinct leaf of each selected example counts once. Accuracy: the student's, "
              "with the judged count in brackets.", "", "## Topics", "", topic_table(result, tree),
              "## Leaves", "", selection_table(result, tree)]
    if pool_tokens is not None:
        lines += ["## Trace lengths (pool stage)", "", truncation_table(pool_tokens)]
    return "\n".join(lines)


def run_selection_report(pool: str, tree: str, attribution: str, profile: str | None, output_dir: str,
                         selection: SelectionConfig = SelectionConfig(), verdicts: str | None = None,
                         display_names: str | None = None) -> dict:
    """Select a training budget from the pool and report it per skill.

    Args:
        pool: canonical pool JSONL ({"id", "problem", "trace", "answer", "pass_rate"}).
        tree: skill tree JSON.
        attribution: attribution JSONL ({"id", "chains"}) of the pool.
        profile: profile.json of the profile stage (needed by strategy ``skill``; null otherwise).
        output_dir: where manifest.json, selection_report.md and selection_report.png are written.
        selection: the selection strategy and its knobs.
        verdicts: verdicts.jsonl of the profile stage (needed by ``correctness`` / ``wrong_share``).
        display_names: optional long-name -> short-name map of the tree (EvalTree), used in the report.

    Returns a summary dict (paths, counts, divergences). Raises DataError for unusable inputs.
    """
    inputs = load_selection_inputs(pool, tree, attribution, profile, verdicts, display_names, selection.profile_value)
    pool_tokens = pool_token_stats(pool)  # reused as the pool stage counted them, not recounted
    result = inputs.select(selection)
    warning = result_warning(result, selection, inputs.raw_accuracy)
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest, report, png = out / "manifest.json", out / "selection_report.md", out / "selection_report.png"
    write_manifest(manifest, result, selection, inputs.fingerprints, decontamination=read_counts(pool))
    names = {"pool": pool, "tree": tree, "attribution": attribution, "profile": profile, "verdicts": verdicts}
    with atomic_write(report) as f:
        f.write(report_markdown(result, inputs.tree, selection, names, warning, pool_tokens))
    plot_selection(result, inputs.tree, png)
    summary = {"manifest": str(manifest), "report": str(report), "plot": str(png), "selected": len(result.ids),
               "pool_size": result.pool_size, "eligible": result.eligible, "divergence": result.divergence(),
               "notes": result.notes, "warning": warning, "pool_tokens": pool_tokens}
    from skill_distill.console import summary as print_summary

    print_summary("select-report", [f"selected {len(result.ids)} of {result.pool_size} examples "
                                    f"({selection.strategy}, {result.eligible} eligible)",
                                    *(f"note: {n}" for n in result.notes),
                                    f"manifest: {manifest}", f"report: {report}", f"chart: {png}"])
    return summary
