"""What a person running a stage sees: plain progress lines (they show up in a redirected log as they happen) and a
short summary at the end of each stage (a rich panel on a terminal, plain lines otherwise)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence


def progress(stage: str, message: str) -> None:
    """One plain, flushed line on stderr: ``[stage] message``.

    Kept plain instead of a ``rich.progress.Progress`` bar: with stderr redirected to a file (a batch job's log), rich
    (checked with 15.0) writes only the bar's final frame when the task stops, so the log would show no progress
    while a stage runs for hours (issue 12); the end-of-stage ``summary`` uses rich where a terminal shows it.
    """
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def summary(stage: str, lines: Sequence[str]) -> None:
    """The end-of-stage summary on stdout: a rich panel when stdout is a terminal, else ``[stage] line`` lines."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.panel import Panel
        from rich.text import Text

        Console().print(Panel(Text("\n".join(lines)), title=f"{stage}: done", title_align="left", expand=False))
    else:
        for line in lines:
            print(f"[{stage}] {line}", flush=True)


def weakest_skill(rows: Iterable[Mapping]) -> Mapping | None:
    """The leaf row with the lowest accuracy among per-skill rows ``{"chain", "accuracy", "judged"/"problems",
    "is_leaf"}`` (rows without an accuracy or without problems are skipped); None when there is none."""
    rows = [r for r in rows if r.get("chain") and r.get("accuracy") is not None
            and (r.get("judged") or r.get("problems") or r.get("samples"))]
    leaves = [r for r in rows if r.get("is_leaf")] or rows
    return min(leaves, key=lambda r: (r["accuracy"], r["chain"])) if leaves else None


def accuracy_text(acc: float | None) -> str:
    return "n/a" if acc is None or acc != acc else f"{100 * acc:.1f}%"


def weakest_text(rows: Iterable[Mapping]) -> str:
    row = weakest_skill(rows)
    if row is None:
        return "weakest skill: none judged"
    n = row.get("judged") or row.get("problems") or row.get("samples")
    return f"weakest skill: {row['chain']} {accuracy_text(row['accuracy'])} ({n} problems)"
