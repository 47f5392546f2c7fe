"""Teacher corpora: reading any source through a field mapping into Examples (the pool stage, ``skill_distill.pool``,
draws the pool from them).

Every later stage reads the *canonical* pool format, one JSON object per line:
``{"id": str, "problem": str, "trace": str, "answer": str, "pass_rate": float | null}``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from skill_distill.decontamination import normalise
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
    messages: str | None = None
    """Optional chat field (a list of ``{"role", "content"}`` turns, e.g. ``messages``): the first user turn is the
    problem and the last assistant turn the trace; ``problem`` and ``trace`` are then not read."""


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


def _text(value, key: str, role: str, where: str) -> str:
    """A text field's value; anything but a string (a chat list, a dict, a number) is refused, since ``str()`` of it
    would silently become a Python repr in the prompt."""
    if value is None:
        return ""
    if not isinstance(value, str):
        fix = ("set fields.messages to this field (chat turns: user -> problem, assistant -> trace)"
               if isinstance(value, list) else f"map fields.{role} to a text field")
        raise DataError(f"{where}: field {key!r} ({role}) holds a {type(value).__name__}, not text; {fix}")
    return value


def _turn(row: dict, fields: CorpusFields, role: str, where: str) -> str:
    """The first user turn (``role="user"``) or the last assistant turn of the row's chat field."""
    key = fields.messages
    turns = row.get(key)
    if not isinstance(turns, list) or not all(isinstance(t, dict) and "role" in t for t in turns):
        raise DataError(f"{where}: field {key!r} (messages) must be a list of {{\"role\", \"content\"}} turns, got "
                        f"{type(turns).__name__}; fix the row or unset fields.messages")
    found = [t for t in turns if t["role"] == role]
    if not found:
        return ""
    return _text(found[0 if role == "user" else -1].get("content"), key, f"messages {role} turn", where)


def _problem_of(row: dict, fields: CorpusFields, where: str) -> str:
    """The problem text of a row (its field, or the first user turn of ``fields.messages``); a missing or empty
    problem raises DataError naming ``where``."""
    if fields.messages:
        problem = _turn(row, fields, "user", where)
        if not problem:
            raise DataError(f"{where}: field {fields.messages!r} (messages) has no user turn with text; "
                            "the first user turn is the problem")
        return problem
    if fields.problem not in row:
        raise DataError(f"{where}: missing field {fields.problem!r} (problem); "
                        "set the corpus field mapping (fields.problem)")
    if row[fields.problem] is None:
        raise DataError(f"{where}: field {fields.problem!r} (problem) is empty; fix the row or the mapping")
    return _text(row[fields.problem], fields.problem, "problem", where)


def _trace_of(row: dict, fields: CorpusFields, where: str) -> str:
    """The full teacher trace of a row: the trace field (or the last assistant turn of ``fields.messages``), behind
    ``<think>\n{reasoning}\n</think>\n\n`` when the corpus keeps the reasoning apart."""
    if fields.messages:
        trace = _turn(row, fields, "assistant", where)
    else:
        trace = _text(row.get(fields.trace), fields.trace, "trace", where) if fields.trace else ""
    if fields.reasoning:
        if row.get(fields.reasoning) is None:
            raise DataError(f"{where}: missing field {fields.reasoning!r} (reasoning); set fields.reasoning")
        reasoning = _text(row[fields.reasoning], fields.reasoning, "reasoning", where)
        trace = f"<think>\n{reasoning.strip()}\n</think>\n\n{trace.strip()}"
    return trace


def problem_key(seed: int, problem: str) -> int:
    """The rank of a problem in a seeded draw: sha256 of the seed and the normalised problem text (which is also
    the problem's identity: two rows with the same normalised text are traces of one problem)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{normalise(problem)}".encode()).digest()[:16], "big")


LIMIT_SEED = 42
"""Seed of the ``limit`` samples of the attribute and profile stages (one seed: both take the same problems)."""


def seeded_positions(examples: Sequence[Example], limit: int | None, seed: int = LIMIT_SEED) -> list[int]:
    """Positions of the ``limit`` examples whose problems rank first by ``problem_key(seed, problem)`` (the pool's
    own draw rank), in input order: a uniform sample, unlike the first rows of a pool kept in source order (which
    may be sorted by category). None keeps every position."""
    if limit is None or limit >= len(examples):
        return list(range(len(examples)))
    ranked = sorted(range(len(examples)), key=lambda i: (problem_key(seed, examples[i].problem), i))
    return sorted(ranked[:limit])


def seeded_sample(examples: Sequence[Example], limit: int | None, seed: int = LIMIT_SEED) -> list[Example]:
    """The examples at ``seeded_positions``."""
    return [examples[i] for i in seeded_positions(examples, limit, seed)]


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
    needed = [] if fields.messages else [("problem", fields.problem)]
    if require_trace and fields.trace and not fields.messages:
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
            problem=_problem_of(row, fields, where),
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
