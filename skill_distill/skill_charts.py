"""Charts of an evaluation report (``report.json`` from ``skill_distill.evaluation``), drawn with matplotlib (Agg).

- ``skills_<set>.png`` per set with skills: one row per skill, grouped by topic (a bold topic row with the
  accuracy over all of the topic's problems, then its leaves), topics and leaves sorted by accuracy; bars with
  their confidence intervals, the problem count, the set's overall accuracy as a dashed line, the baseline
  evaluation's accuracy as a hollow diamond with the change in points, and the skills the training selection
  emphasised marked with a star and an orange bar. When the set has a held-out teacher-student divergence (a run with
  a teacher), a right-hand panel beside the accuracy bars shows each skill's KL(teacher || student), nats per token;
  in on-policy runs a second bar per skill shows KL(student || teacher) on the student's own samples.
- ``summary.png``: avg@k per set with intervals (and the baseline).
- ``history_<set>.png`` (``write_history``): every evaluation of a run so far (baseline, epoch 0, 1, ...), one
  column each, one row per skill (the rows of the latest ``skills_<set>.png``), each cell its accuracy: how every
  skill moved over the epochs.

Charts are built from the report dicts alone, so they can be redrawn from saved files:
``write_charts(load_report("eval/epoch=4/report.json"), "out/", baseline=load_report("eval/baseline/report.json"))``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from skill_distill.io import atomic_write, read_json
from skill_distill.skill_tree import parse_chain

MAX_LEAF_ROWS = 80
LABEL_CHARS = 48
COLORS = {"leaf": "#4C72B0", "topic": "#2F3E5C", "emphasised": "#DD8452", "up": "#2E7D32", "down": "#C62828",
          "baseline": "black", "overall": "#7F7F7F", "kl": "#8172B3", "sample_kl": "#CCB974"}


def load_report(path: str | os.PathLike) -> dict:
    """Read a ``report.json``; raises DataError if it is missing or malformed."""
    return read_json(path, "evaluation report")


def emphasised_skills(manifest_path: str | os.PathLike, min_ratio: float = 1.2) -> dict[str, float]:
    """Leaves the selection emphasised: ``{chain: share in the selection / share in the pool}`` for every leaf
    whose ratio is at least ``min_ratio`` (all-chains histograms of ``selection_manifest.json``). Empty for
    ``random`` and ``all`` selections, or when the file does not exist."""
    p = Path(manifest_path)
    if not p.is_file():
        return {}
    manifest = read_json(p, "selection manifest")
    if manifest.get("strategy") in ("random", "all"):
        return {}
    chosen, pool = manifest.get("achieved_all_chains") or {}, manifest.get("pool") or {}
    out = {}
    for chain, share in chosen.items():
        base = pool.get(chain)
        if base and share / base >= min_ratio:
            out[chain] = share / base
    return out


def _short(text: str, n: int = LABEL_CHARS) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _baseline_skills(baseline: Mapping | None, name: str) -> dict[str, float]:
    if not baseline:
        return {}
    metrics = (baseline.get("benchmarks", {}).get(name) or {}).get("metrics") or {}
    return {row["chain"]: row["accuracy"] for row in metrics.get("skills", [])}


def _skill_rows(skills: list[dict]) -> tuple[list[tuple[str, dict]], int]:
    """(kind, row) in display order: per topic its row then its leaves; and how many leaves were left out."""
    topics = {r["chain"]: r for r in skills if r["depth"] == 1}
    leaves = [r for r in skills if r.get("is_leaf") and r["depth"] > 1]
    if not leaves:  # topic-level skills (e.g. MATH subjects): the topics are the skills
        return [("leaf", r) for r in sorted(topics.values(), key=lambda r: -r["accuracy"])], 0
    dropped = 0
    if len(leaves) > MAX_LEAF_ROWS:
        keep = sorted(leaves, key=lambda r: (-r["judged"], r["chain"]))[:MAX_LEAF_ROWS]
        dropped = len(leaves) - len(keep)
        leaves = keep
    by_topic: dict[str, list[dict]] = {}
    for r in leaves:
        by_topic.setdefault(parse_chain(r["chain"])[0], []).append(r)
    rows: list[tuple[str, dict]] = []
    order = sorted(by_topic, key=lambda t: -(topics[t]["accuracy"] if t in topics else 0.0))
    for t in order:
        if t in topics:
            rows.append(("topic", topics[t]))
        rows += [("leaf", r) for r in sorted(by_topic[t], key=lambda r: (-r["accuracy"], r["chain"]))]
    return rows, dropped


def _save(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")


def plot_skills(report: Mapping, name: str, path: str | os.PathLike, baseline: Mapping | None = None,
                emphasised: Mapping[str, float] | None = None) -> bool:
    """Draw the per-skill chart of set ``name`` into ``path``; False (nothing written) when it has no skills."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    entry = report["benchmarks"][name]
    metrics = entry["metrics"]
    rows, dropped = _skill_rows(metrics.get("skills") or [])
    if not rows:
        return False
    emphasised = dict(emphasised or {})
    base = _baseline_skills(baseline, name)
    n = len(rows)
    with_kl = any(row.get("kl") is not None or row.get("sample_kl") is not None for _, row in rows)
    fig = Figure(figsize=(15 if with_kl else 11, 1.6 + 0.32 * n))
    if with_kl:
        ax, ax_kl = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 1], "wspace": 0.12})
    else:
        ax = fig.add_subplot(1, 1, 1)
    ys = list(range(n))[::-1]
    labels = []
    for y, (kind, row) in zip(ys, rows, strict=True):
        chain = row["chain"]
        parts = parse_chain(chain)
        acc, lo, hi = 100 * row["accuracy"], 100 * row["ci_low"], 100 * row["ci_high"]
        star = chain in emphasised
        color = COLORS["topic"] if kind == "topic" else COLORS["emphasised"] if star else COLORS["leaf"]
        ax.barh(y, acc, height=0.7, color=color, alpha=0.9 if kind == "topic" else 0.8)
        # rounding can put an interval end a hair past the estimate: clamp so the error bars stay valid
        ax.errorbar(acc, y, xerr=[[max(0.0, acc - lo)], [max(0.0, hi - acc)]], fmt="none", ecolor="black",
                    elinewidth=1, capsize=2)
        text = f"n={row['judged']}"
        if chain in base:
            b = 100 * base[chain]
            ax.plot(b, y, marker="D", markersize=6, markerfacecolor="none", markeredgecolor=COLORS["baseline"])
            delta = acc - b
            text += f"  {delta:+.1f}"
            ax.text(101.5, y, text, va="center", fontsize=8,
                    color=COLORS["up"] if delta > 0 else COLORS["down"] if delta < 0 else "black")
        else:
            ax.text(101.5, y, text, va="center", fontsize=8)
        if kind == "topic":
            labels.append(_short(parts[0]).upper() if len(parts) == 1 else _short(chain))
        else:
            label = _short(parts[-1] if len(parts) > 1 and any(k == "topic" for k, _ in rows) else chain)
            indent = "    " if any(k == "topic" for k, _ in rows) else ""
            labels.append(indent + (f"★ {label} (×{emphasised[chain]:.1f})" if star else label))
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=9)
    for tick, (kind, _) in zip(ax.get_yticklabels(), rows, strict=True):
        if kind == "topic":
            tick.set_fontweight("bold")
    overall = metrics.get("accuracy")
    if overall is not None:
        ax.axvline(100 * overall, color=COLORS["overall"], linestyle="--", linewidth=1)
    if with_kl:
        _plot_kl(ax_kl, ys, rows, metrics.get("divergence"), metrics.get("sample_divergence"))
    ax.set_xlim(0, 100)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(f"accuracy (%), avg@{metrics['k']}; bars: {int(100 * metrics.get('confidence', 0.95))}% interval "
                  "over problems")
    ax.grid(axis="x", alpha=0.3)
    title = f"{name}: accuracy per skill — {report.get('tag', '')}"
    if overall is not None:
        title += f"  (overall {100 * overall:.1f}% on {metrics['problems']} problems)"
    if dropped:
        title += f"\n{MAX_LEAF_ROWS} skills with the most problems shown; {dropped} more in report.json"
    ax.set_title(title, fontsize=11, loc="left")
    handles = [Patch(color=COLORS["leaf"], label="skill accuracy"),
               Line2D([], [], color="black", label="interval", linewidth=1)]
    if any(k == "topic" for k, _ in rows):
        handles.insert(1, Patch(color=COLORS["topic"], label="topic (all its problems)"))
    if overall is not None:
        handles.append(Line2D([], [], color=COLORS["overall"], linestyle="--", label="overall"))
    if base:
        handles.append(Line2D([], [], marker="D", markerfacecolor="none", markeredgecolor="black", linestyle="none",
                              label=f"baseline ({baseline.get('tag', 'baseline')}); right: change in points"))
    if emphasised:
        handles.append(Patch(color=COLORS["emphasised"], label="★ emphasised by the training selection "
                                                                "(×: its share of the selection / of the pool)"))
    # below the x label: offset in inches turned into a fraction of the axes height
    axes_inches = fig.get_figheight() * (fig.subplotpars.top - fig.subplotpars.bottom)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.55 / axes_inches),
              ncol=min(3, len(handles)), fontsize=8, frameon=False)
    _save(fig, Path(path))
    return True


def _plot_kl(ax, ys: list[int], rows: list[tuple[str, dict]], divergence: Mapping | None,
             sample_divergence: Mapping | None = None) -> None:
    """The per-skill KL panel beside the accuracy bars (rows without a value stay empty): KL(teacher || student) on
    held-out teacher traces and, in on-policy runs, KL(student || teacher) on the student's own samples (the lower
    bar of each row)."""
    both = divergence is not None and sample_divergence is not None
    height = 0.35 if both else 0.7
    labels = []
    for d, key, color, shift in ((divergence, "kl", COLORS["kl"], 0.18), (sample_divergence, "sample_kl",
                                                                          COLORS["sample_kl"], -0.18)):
        if d is None:
            continue
        for y, (kind, row) in zip(ys, rows, strict=True):
            if row.get(key) is not None:
                ax.barh(y + (shift if both else 0), row[key], height=height,
                        color=COLORS["topic"] if kind == "topic" else color, alpha=0.9 if kind == "topic" else 0.8)
        if d.get("kl") is not None:
            ax.axvline(d["kl"], color=color, linestyle="--", linewidth=1)
        source = "held-out teacher traces" if key == "kl" else "the student's own samples"
        labels.append(f"{d['direction']} on {source}")
    ax.set_xlim(left=0)
    ax.set_xlabel("nats per token (dashed: overall)\n" + "\n".join(labels), fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.tick_params(axis="y", left=False)


def plot_summary(report: Mapping, path: str | os.PathLike, baseline: Mapping | None = None) -> bool:
    """Draw avg@k per set with intervals (and baseline diamonds) into ``path``; False when there are no sets."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    summary = {k: v for k, v in (report.get("summary") or {}).items() if v.get("accuracy") is not None}
    if not summary:
        return False
    names = list(summary)
    fig = Figure(figsize=(max(5.0, 1.3 * len(names) + 2), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    base = (baseline or {}).get("summary") or {}
    for x, name in enumerate(names):
        s = summary[name]
        acc = 100 * s["accuracy"]
        ax.bar(x, acc, width=0.6, color=COLORS["leaf"], alpha=0.85)
        if s.get("ci_low") is not None:
            ax.errorbar(x, acc, yerr=[[max(0.0, acc - 100 * s["ci_low"])], [max(0.0, 100 * s["ci_high"] - acc)]],
                        fmt="none", ecolor="black", capsize=3)
        top = 100 * s["ci_high"] if s.get("ci_high") is not None else acc
        ax.text(x, top + 2, f"{acc:.1f}", ha="center", fontsize=9, fontweight="bold")
        b = (base.get(name) or {}).get("accuracy")
        if b is not None:
            ax.plot(x, 100 * b, marker="D", markersize=7, markerfacecolor="none", markeredgecolor="black")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n}\navg@{summary[n]['k']}, {summary[n]['problems']} pr." for n in names], fontsize=9)
    ax.set_ylim(0, 108)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"accuracy per set — {report.get('tag', '')}", fontsize=11, loc="left")
    handles = [Patch(color=COLORS["leaf"], label="avg@k"), Line2D([], [], color="black", label="interval")]
    if base:
        handles.append(Line2D([], [], marker="D", markerfacecolor="none", markeredgecolor="black", linestyle="none",
                              label=f"baseline ({baseline.get('tag', 'baseline')})"))
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(handles),
              frameon=False)
    _save(fig, Path(path))
    return True


def chart_name(name: str) -> str:
    return "skills_" + "".join(c if c.isalnum() or c in "-_." else "_" for c in name) + ".png"


def write_charts(report: Mapping, out_dir: str | os.PathLike, baseline: Mapping | None = None,
                 emphasised: Mapping[str, float] | None = None) -> dict[str, str]:
    """Write ``summary.png`` and ``skills_<set>.png`` for every set with skills; returns ``{chart: path}``."""
    out = Path(out_dir)
    paths = {}
    if plot_summary(report, out / "summary.png", baseline):
        paths["summary"] = str(out / "summary.png")
    for name in report.get("benchmarks", {}):
        p = out / chart_name(name)
        if plot_skills(report, name, p, baseline, emphasised):
            paths[f"skills/{name}"] = str(p)
    return paths


def history_name(name: str) -> str:
    return chart_name(name).replace("skills_", "history_", 1)


def _order(report: Mapping) -> tuple[int, int]:
    epoch = report.get("epoch")
    return (0, 0) if epoch is None else (1, int(epoch))  # the baseline first, then the epochs in order


def plot_history(reports: list[Mapping], name: str, path: str | os.PathLike) -> bool:
    """One heat-map of set ``name`` over ``reports`` (in order): skills as rows, evaluations as columns, each cell
    the skill's accuracy (%). False (nothing written) with fewer than two evaluations of the set with skills."""
    from matplotlib.figure import Figure

    having = [r for r in reports if ((r.get("benchmarks", {}).get(name) or {}).get("metrics") or {}).get("skills")]
    if len(having) < 2:
        return False
    rows, _ = _skill_rows(having[-1]["benchmarks"][name]["metrics"]["skills"])
    chains = [row["chain"] for _, row in rows]
    accuracy = [{s["chain"]: s["accuracy"] for s in r["benchmarks"][name]["metrics"]["skills"]} for r in having]
    grid = [[100 * a[chain] if a.get(chain) is not None else float("nan") for a in accuracy] for chain in chains]
    columns = [str(r.get("tag") or f"epoch={r.get('epoch')}") for r in having]
    fig = Figure(figsize=(3 + 1.1 * len(columns), 1.6 + 0.32 * len(chains)))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    for y, line in enumerate(grid):
        for x, v in enumerate(line):
            if v == v:  # not NaN
                ax.text(x, y, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 55 else "black")
    ax.set_xticks(range(len(columns)), columns, fontsize=8)
    ax.set_yticks(range(len(chains)), [_short(("  " if kind == "leaf" else "") + parse_chain(c)[-1])
                                       for (kind, _), c in zip(rows, chains, strict=True)], fontsize=8)
    ax.set_title(f"{name}: per-skill accuracy (%) at every evaluation", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    _save(fig, Path(path))
    return True


def write_history(eval_root: str | os.PathLike) -> dict[str, str]:
    """``history_<set>.png`` in ``eval_root`` from every ``<eval_root>/*/report.json`` (a resumed run's earlier
    evaluations included); returns ``{chart: path}``."""
    root = Path(eval_root)
    reports = sorted((load_report(p) for p in root.glob("*/report.json")), key=_order)
    names = sorted({n for r in reports for n in r.get("benchmarks", {})})
    paths = {}
    for name in names:
        p = root / history_name(name)
        if plot_history(reports, name, p):
            paths[f"history/{name}"] = str(p)
    return paths
