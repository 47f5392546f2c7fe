"""Teacher corpora: reading any source through a field mapping, and building a seeded pool with a held-out slice.

Every later stage reads the *canonical* pool format written here, one JSON object per line:
``{"id": str, "problem": str, "trace": str, "answer": str, "pass_rate": float | null}``.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from skill_distill.io import DataError, read_json, read_jsonl, read_parquet_rows, write_jsonl


@dataclass
class CorpusFields:
    """Which source field holds each part of an example."""

    id: str | None = "id"
    """Unique id field; None numbers the rows of the source (``"0"``, ``"1"``, ...)."""
    problem: str = "problem"
    trace: str | None = "trace"
    """Teacher reasoning trace (``<think> ... </think>`` then the written solution); None for eval-only sets."""
    answer: str | None = "answer"
    """Reference final answer."""
    reasoning: str | None = None
    """Optional separate reasoning field: the trace becomes ``<think>\n{reasoning}\n</think>\n\n{trace}``
    (for corpora that store the thinking and the written solution apart)."""
    pass_rate: str | None = None
    """Optional reference pass rate in [0, 1] (OpenMathReasoning: ``pass_rate_72b_tir``), used by ``difficulty``."""


@dataclass
class Example:
    id: str
    problem: str
    trace: str = ""
    answer: str = ""
    pass_rate: float | None = None

    def to_row(self) -> dict:
        return asdict(self)


CANONICAL = CorpusFields(id="id", problem="problem", trace="trace", answer="answer", pass_rate="pass_rate")


def _read_source(source: str, split: str) -> tuple[list[dict], str]:
    p = Path(source)
    suffix = p.suffix.lower()
    if suffix in {".jsonl", ".json", ".parquet"} or p.exists():
        if not p.is_file():
            raise DataError(f"corpus file not found: {p}; check the path (relative paths start at the working directory)")
        if suffix == ".jsonl":
            return read_jsonl(p, "corpus file"), str(p)
        if suffix == ".json":
            data = read_json(p, "corpus file")
            if not isinstance(data, list):
                raise DataError(f"{p}: a .json corpus must be a JSON array of objects")
            return data, str(p)
        if suffix == ".parquet":
            return read_parquet_rows(p, "corpus file"), str(p)
        raise DataError(f"{p}: unsupported corpus format {suffix!r}; use .jsonl, .json or .parquet")
    # anything else is a dataset name on the HF hub (or in its local cache)
    import datasets

    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; the user needs one line
        raise DataError(f"cannot load corpus {source!r} (split {split!r}) as a file or HF dataset: {type(e).__name__}: {e}") from None
    return ds.to_list(), f"{source}[{split}]"


def load_corpus(source: str | os.PathLike, fields: CorpusFields = CANONICAL, split: str = "train",
                limit: int | None = None, require_trace: bool = True) -> list[Example]:
    """Read a corpus into Examples.

    Raises DataError naming the source, the row and the field for a missing field, a duplicate id or an
    empty corpus.
    """
    rows, name = _read_source(str(source), split)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise DataError(f"{name}: the corpus is empty")
    out: list[Example] = []
    seen: dict[str, int] = {}
    needed = [("problem", fields.problem)]
    if require_trace and fields.trace:
        needed.append(("trace", fields.trace))
    for i, row in enumerate(rows):
        where = f"{name}: row {i + 1}"
        for role, key in needed:
            if key not in row or row[key] is None:
                raise DataError(f"{where}: missing field {key!r} ({role}); set the corpus field mapping (fields.{role})")
        if fields.id is None:
            ex_id = str(i)
        else:
            if fields.id not in row:
                raise DataError(f"{where}: missing id field {fields.id!r}; set fields.id, or null to number rows")
            ex_id = str(row[fields.id])
        if ex_id in seen:
            raise DataError(f"{where}: duplicate id {ex_id!r} (first at row {seen[ex_id] + 1}); ids must be unique")
        seen[ex_id] = i
        answer = row.get(fields.answer) if fields.answer else None
        if isinstance(answer, list):  # some sets store a list of equivalent answers
            answer = answer[0] if len(answer) == 1 else json.dumps(answer)
        pass_rate = row.get(fields.pass_rate) if fields.pass_rate else None
        trace = str(row.get(fields.trace, "") or "") if fields.trace else ""
        if fields.reasoning:
            if row.get(fields.reasoning) is None:
                raise DataError(f"{where}: missing field {fields.reasoning!r} (reasoning); set fields.reasoning")
            trace = f"<think>\n{str(row[fields.reasoning]).strip()}\n</think>\n\n{trace.strip()}"
        out.append(Example(
            id=ex_id,
            problem=str(row[fields.problem]),
            trace=trace,
            answer="" if answer is None else str(answer),
            pass_rate=_as_rate(pass_rate),
        ))
    return out


def _as_rate(value) -> float | None:
    """Pass rates arrive as numbers or strings; non-numeric markers (OpenMathReasoning's "n/a") mean unknown."""
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def save_corpus(path: str | os.PathLike, examples: list[Example]) -> None:
    write_jsonl(path, (e.to_row() for e in examples))


@dataclass
class PoolFilter:
    require_answer: bool = True
    """Drop examples without a reference answer (they cannot be graded)."""
    require_think_close: bool = True
    """Drop traces without ``</think>`` (no separable final solution)."""
    max_trace_chars: int | None = None
    """Drop traces longer than this many characters (None keeps all)."""


def build_pool(examples: list[Example], size: int | None, heldout: int, seed: int = 42,
               filters: PoolFilter | None = None) -> tuple[list[Example], list[Example], dict]:
    """Filter, then draw a seeded pool of ``size`` examples and a disjoint held-out slice of ``heldout``.

    Returns (pool, heldout, stats). The held-out slice is never seen by selection.
    """
    filters = filters or PoolFilter()
    kept, dropped = [], {"no_answer": 0, "no_think_close": 0, "too_long": 0}
    for e in examples:
        if filters.require_answer and not e.answer.strip():
            dropped["no_answer"] += 1
        elif filters.require_think_close and "</think>" not in e.trace:
            dropped["no_think_close"] += 1
        elif filters.max_trace_chars is not None and len(e.trace) > filters.max_trace_chars:
            dropped["too_long"] += 1
        else:
            kept.append(e)
    rng = random.Random(seed)
    order = list(range(len(kept)))
    rng.shuffle(order)
    want = len(kept) - heldout if size is None else size
    if heldout + want > len(kept):
        raise DataError(f"pool of {want} plus held-out {heldout} needs {heldout + want} examples, "
                        f"but only {len(kept)} pass the filters; lower pool size or heldout")
    held = [kept[i] for i in order[:heldout]]
    pool = [kept[i] for i in order[heldout: heldout + want]]
    stats = {"source_examples": len(examples), "after_filters": len(kept), "dropped": dropped,
             "pool": len(pool), "heldout": len(held), "seed": seed}
    return pool, held, stats


def run_pool(corpus: str, output_dir: str, fields: CorpusFields = CorpusFields(), split: str = "train",
             size: int | None = None, heldout: int = 0, seed: int = 42, filters: PoolFilter = PoolFilter(),
             limit: int | None = None) -> dict:
    """Build the training pool and its held-out slice from a teacher corpus (the ``pool`` stage).

    Args:
        corpus: .jsonl/.json/.parquet file or HF dataset name (the paper: ``nvidia/OpenMathReasoning``).
        output_dir: writes ``pool.jsonl``, ``heldout.jsonl`` (canonical rows) and ``pool_stats.json``.
        fields: which source fields hold id, problem, trace (and reasoning), answer and pass rate.
        split: dataset split for HF datasets.
        size: pool size after filtering (the paper: 100,000); None keeps everything not held out.
        heldout: examples set aside for per-epoch monitoring; selection never sees them.
        seed: seed of the draw.
        filters: reference answer present, trace contains ``</think>``, length cap.
        limit: read only the first rows of the source (quick runs).
    """
    from skill_distill.io import write_json

    examples = load_corpus(corpus, fields, split, limit=limit)
    pool, held, stats = build_pool(examples, size, heldout, seed, filters)
    out = Path(output_dir)
    save_corpus(out / "pool.jsonl", pool)
    save_corpus(out / "heldout.jsonl", held)
    stats.update({"corpus": str(corpus), "split": split, "fields": asdict(fields), "filters": asdict(filters)})
    write_json(out / "pool_stats.json", stats)
    from skill_distill.console import summary

    dropped = ", ".join(f"{n} {why}" for why, n in stats["dropped"].items() if n) or "none"
    summary("pool", [f"{stats['source_examples']} source examples, {stats['after_filters']} pass the filters "
                     f"(dropped: {dropped})", f"pool: {stats['pool']} examples -> {out / 'pool.jsonl'}",
                     f"held-out: {stats['heldout']} examples -> {out / 'heldout.jsonl'}",
                     f"stats: {out / 'pool_stats.json'}"])
    return stats
