"""Teacher corpora: reading any source through a field mapping into Examples (the pool stage, ``skill_distill.pool``,
draws the pool from them).

Every later stage reads the *canonical* pool format, one JSON object per line:
``{"id": str, "problem": str, "trace": str, "answer": str, "pass_rate": float | null}``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from skill_distill.io import DataError
from skill_distill.rows import iter_row_batches, read_rows, source_name


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
    generation_model: str | None = None
    """Optional field naming the model that wrote the trace (OpenMathReasoning: ``generation_model``), for the
    pool's ``filters.generation_model``."""
    problem_type: str | None = None
    """Optional problem-type field (OpenMathReasoning: ``problem_type``), for ``filters.problem_type``."""


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
    """Every row of a corpus and its name for messages (``skill_distill.rows`` reads it)."""
    return read_rows(source, split)


def _trace_of(row: dict, fields: CorpusFields, where: str) -> str:
    """The full teacher trace of a row: the trace field, behind ``<think>\n{reasoning}\n</think>\n\n`` when the
    corpus keeps the reasoning apart."""
    trace = str(row.get(fields.trace, "") or "") if fields.trace else ""
    if fields.reasoning:
        if row.get(fields.reasoning) is None:
            raise DataError(f"{where}: missing field {fields.reasoning!r} (reasoning); set fields.reasoning")
        trace = f"<think>\n{str(row[fields.reasoning]).strip()}\n</think>\n\n{trace.strip()}"
    return trace


def _answer_of(row: dict, fields: CorpusFields) -> str:
    answer = row.get(fields.answer) if fields.answer else None
    if isinstance(answer, list):  # some sets store a list of equivalent answers
        answer = answer[0] if len(answer) == 1 else json.dumps(answer)
    return "" if answer is None else str(answer)


def load_corpus(source: str | os.PathLike, fields: CorpusFields = CANONICAL, split: str = "train",
                limit: int | None = None, require_trace: bool = True) -> list[Example]:
    """Read a corpus into Examples.

    Raises DataError naming the source, the row and the field for a missing field, a duplicate id or an
    empty corpus.
    """
    name = source_name(source, split)
    rows: list[dict] = []
    for batch in iter_row_batches(source, 10_000, split=split):
        rows.extend(batch)
        if limit is not None and len(rows) >= limit:
            break  # limit stops reading
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
                raise DataError(f"{where}: missing field {key!r} ({role}); "
                                f"set the corpus field mapping (fields.{role})")
        if fields.id is None:
            ex_id = str(i)
        else:
            if fields.id not in row:
                raise DataError(f"{where}: missing id field {fields.id!r}; set fields.id, or null to number rows")
            ex_id = str(row[fields.id])
        if ex_id in seen:
            raise DataError(f"{where}: duplicate id {ex_id!r} (first at row {seen[ex_id] + 1}); ids must be unique")
        seen[ex_id] = i
        out.append(Example(
            id=ex_id,
            problem=str(row[fields.problem]),
            trace=_trace_of(row, fields, where),
            answer=_answer_of(row, fields),
            pass_rate=_as_rate(row.get(fields.pass_rate) if fields.pass_rate else None),
        ))
    return out


def _as_rate(value) -> float | None:
    """Pass rates arrive as numbers or strings; non-numeric markers (OpenMathReasoning's "n/a") mean unknown."""
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None
