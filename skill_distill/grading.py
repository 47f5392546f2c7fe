"""Grading: the last ``\\boxed{...}`` of an output against a reference answer, decided by math-verify.

A prediction is the content of the LAST ``\\boxed{}`` (or ``\\boxed x`` / ``\\fbox{}``) of the whole output
(docs/METHOD.md §3 and §7); an output without one (e.g. truncated mid-reasoning) is wrong. Equivalence is
math-verify's ``verify(parse(gold), parse(prediction))`` with both sides given to ``parse`` as ``\\boxed{...}`` (this
parses every gold of the five pinned benchmark files, ``asset:bench/*``; plain ``$gold$`` fails on e.g. ``$221,$8$``,
bare text on tuples).
A list of golds is correct if any of them matches.

Beyond the paper, ``Grader(fallback="last_number")`` grades the last number of an output that has no box (for
small quickstart students that answer in prose); the default ``"none"`` is the paper's strict rule.

math-verify's own timeouts use ``signal.alarm`` and fail outside the main thread, so ``Grader`` checks in worker
processes (each in its own main thread) and enforces its own per-item time limit with ``setitimer``; math-verify's
alarms are switched off so the two never cancel each other.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from skill_distill.io import ConfigError

AnswerFallback = Literal["none", "last_number"]

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


@dataclass
class GradingConfig:
    """How answers are graded and how accuracies get their intervals: one group for the evaluate and profile stages
    and the in-training evaluation."""

    workers: int = 2
    """Grading processes (0: grade in the calling process)."""
    timeout_s: float = 5.0
    """Per-answer time limit of the equivalence check; a timeout counts as wrong (0: no limit)."""
    confidence: float = 0.95
    """Level of the reported intervals (Wilson with one sample per problem, else a bootstrap over problems)."""
    bootstrap_resamples: int = 1000
    """Resamples of the bootstrap intervals."""

    def __post_init__(self) -> None:
        for name, ok, why in (("workers", self.workers >= 0, "must be >= 0 (0: in this process)"),
                              ("timeout_s", self.timeout_s >= 0, "must be >= 0 seconds (0: no limit)"),
                              ("confidence", 0 < self.confidence < 1, "must lie in (0, 1), e.g. 0.95"),
                              ("bootstrap_resamples", self.bootstrap_resamples >= 1, "must be >= 1")):
            if not ok:
                raise ConfigError(f"grading.{name}={getattr(self, name)!r}: {why}")


@dataclass(frozen=True)
class Verdict:
    correct: bool
    extracted: str | None
    """Content of the last box of the output, None when there is none."""
    timed_out: bool = False
    """The check hit the per-item time limit (and so counts as wrong)."""


def extract_last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\boxed x`` / ``\\fbox{...}`` in ``text`` (nested braces handled).

    Returns None when there is no box, when the last box is never closed (an output cut off inside it), or when
    the box is empty. Only the last box counts, wherever it is (inside ``<think>`` or after it).
    """
    if not text:
        return None
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    i = matches[-1].end()
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i >= n:
        return None
    if text[i] == "{":
        depth, start = 0, i + 1
        while i < n:
            ch = text[i]
            if ch == "\\":  # an escaped brace (\{ or \}) does not open or close the box
                i += 2
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    content = text[start:i].strip()
                    return content or None
            i += 1
        return None  # never closed: truncated inside the box
    # "\boxed 42": the argument runs to the next whitespace or math delimiter
    m = re.match(r"[^\s$]+", text[i:])
    content = m.group(0).rstrip(".,;") if m else ""
    return content or None


_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")


def extract_answer(text: str, fallback: AnswerFallback = "none") -> str | None:
    """``extract_last_boxed(text)``; with ``fallback="last_number"`` and no box, the last number in the text
    (integers, decimals, ``a/b``; thousands separators removed)."""
    boxed = extract_last_boxed(text)
    if boxed is not None or fallback == "none" or not text:
        return boxed
    if fallback != "last_number":
        raise ValueError(f"unknown answer fallback {fallback!r}; use 'none' or 'last_number'")
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def _strip_math_delimiters(s: str) -> str:
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        while len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            s = s[len(left): len(s) - len(right)].strip()
    return s


def _as_boxed(answer: str) -> str:
    """``answer`` as ``\\boxed{...}`` text for math-verify (a gold that already holds a box keeps its content)."""
    inner = extract_last_boxed(answer) if "\\boxed" in answer or "\\fbox" in answer else None
    return "\\boxed{" + _strip_math_delimiters(inner if inner is not None else answer) + "}"


class _ItemTimeout(BaseException):
    """Raised by the interval timer; a BaseException so that math-verify's ``except Exception`` cannot swallow it."""


class _Timer:
    armed = False
    """True while an item's check runs: only then does an alarm stop it."""


def _on_alarm(signum, frame):
    # a late alarm (the timer repeats every 50 ms) whose handler runs after the item was handled is ignored: raised
    # then, it would stop the next item's check
    if _Timer.armed:
        raise _ItemTimeout()


def _drop_timeouts_in_finalizers(previous):
    """An unraisable hook that drops ``_ItemTimeout``: the timer landed in a finalizer (sympy's weakref callbacks),
    where Python cannot raise it, and the repeating timer stops the item 50 ms later. Other unraisable exceptions go
    to ``previous``. Without it every such landing printed an "Exception ignored" traceback, and under pytest the next
    alarm could land inside pytest's own hook while it formatted the first, which failed the test (seen at load 3)."""
    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, _ItemTimeout):
            previous(unraisable)

    return hook


@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse

    return parse(_as_boxed(gold), parsing_timeout=None)


def _check(extracted: str | None, golds: tuple[str, ...]) -> bool:
    from math_verify import parse, verify

    if extracted is None:
        return False
    pred = parse("\\boxed{" + _strip_math_delimiters(extracted) + "}", parsing_timeout=None)
    if not pred:
        return False
    return any(verify(_parse_gold(g), pred, timeout_seconds=None) for g in golds)


def _quiet_math_verify() -> None:
    # it warns once per process that its own timeouts are off: ours are on
    for name in ("math_verify", "math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).setLevel(logging.ERROR)


@lru_cache(maxsize=1)
def _warm_up() -> None:
    """One untimed check per process: math-verify and sympy import parts of themselves on first use (the parser on
    the first parse, the comparison on the first verify), which took more than 0.5 s under load and was charged to
    whichever item came first: a bare "5" timed out after a slow item had been stopped before its verify."""
    _check("\\frac{1}{2}", ("0.5",))


def _grade_items(items: list[tuple[str | None, tuple[str, ...]]], timeout_s: float) -> list[tuple[bool, bool]]:
    """(correct, timed_out) per (extracted, golds) item; a timer bounds each item when on the main thread."""
    _quiet_math_verify()
    if items:
        _warm_up()
    use_timer = timeout_s > 0 and threading.current_thread() is threading.main_thread()
    out = []
    old = signal.signal(signal.SIGALRM, _on_alarm) if use_timer else None
    old_hook = sys.unraisablehook
    if use_timer:
        sys.unraisablehook = _drop_timeouts_in_finalizers(old_hook)
    try:
        for extracted, golds in items:
            # ``_Timer.armed = False`` comes first after the check and first in the handler: CPython runs signal
            # handlers only at calls and backward jumps, so no alarm can be raised between the end of the check (or
            # the raise) and that store, and any alarm after it is ignored
            try:
                if use_timer:
                    _Timer.armed = True
                    # repeating: an alarm that lands in a finalizer (sympy's weakref callbacks) cannot be raised
                    # there (``_drop_timeouts_in_finalizers``); the next one, 50 ms later, stops the item
                    signal.setitimer(signal.ITIMER_REAL, timeout_s, 0.05)
                ok = _check(extracted, golds)
                _Timer.armed = False
                out.append((bool(ok), False))
            except _ItemTimeout:
                _Timer.armed = False
                out.append((False, True))
            finally:
                if use_timer:
                    signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        if use_timer:
            signal.signal(signal.SIGALRM, old)
            sys.unraisablehook = old_hook
    return out


def _worker_init() -> None:
    from skill_distill.process_lifetime import die_with_parent

    die_with_parent()  # a worker must not outlive a stage killed with kill -9
    _quiet_math_verify()
    import math_verify  # noqa: F401  - pay the sympy/antlr import once per worker, not in the first chunk


class Grader:
    """Grades outputs against reference answers in ``workers`` processes (0: in this process).

    Use as a context manager (the worker pool lives until exit) or call ``close()``. ``workers=0`` grades in the
    calling thread; the per-item time limit then applies only on the main thread (elsewhere there is none).

    ``fallback``: what to grade when an output has no box (``"none"``: it is wrong, the paper's rule;
    ``"last_number"``: its last number). Counters (over the grader's lifetime): ``checked``, ``timeouts``.
    """

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, chunk_items: int = 64,
                 fallback: AnswerFallback = "none"):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if fallback not in ("none", "last_number"):
            raise ValueError(f"unknown answer fallback {fallback!r}; use 'none' or 'last_number'")
        self.workers = workers
        self.fallback = fallback
        self.timeout_s = float(timeout_s)
        self.chunk_items = max(1, int(chunk_items))
        self.checked = 0
        self.timeouts = 0
        self._pool = None

    def __enter__(self) -> Grader:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Start the worker processes now (otherwise the first ``grade`` does)."""
        if self.workers and self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn: forking a process that runs a vLLM engine or torch threads is not safe
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)
            # warm every worker up so that start-up cost is not charged to the first batch
            list(self._pool.map(_grade_items, [[]] * self.workers, [self.timeout_s] * self.workers))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def grade(self, outputs: Sequence[str], golds: Sequence[str | Sequence[str]],
              allow_fallback: Sequence[bool] | None = None) -> list[Verdict]:
        """One Verdict per output, in input order. ``golds[i]`` is a reference answer or a list of equivalent ones.
        ``allow_fallback[i] = False`` keeps output i to the strict rule (e.g. a truncated output).

        Raises ValueError when the lengths differ, RuntimeError if a worker process dies.
        """
        if len(outputs) != len(golds):
            raise ValueError(f"got {len(outputs)} outputs but {len(golds)} reference answers")
        if allow_fallback is None:
            allow_fallback = [True] * len(outputs)
        extracted = [extract_answer(o, self.fallback if ok else "none")
                     for o, ok in zip(outputs, allow_fallback, strict=False)]
        items = [(e, (g,) if isinstance(g, str) else tuple(str(x) for x in g))
                 for e, g in zip(extracted, golds, strict=True)]
        if not items:
            return []
        if self.workers == 0:
            results = _grade_items(items, self.timeout_s)
        else:
            self.start()
            from concurrent.futures.process import BrokenProcessPool

            # chunks: several per worker so that one slow item does not idle the other workers
            size = max(1, min(self.chunk_items, -(-len(items) // (self.workers * 4))))
            chunks = [items[i: i + size] for i in range(0, len(items), size)]
            try:
                parts = self._pool.map(_grade_items, chunks, [self.timeout_s] * len(chunks))
                results = [r for part in parts for r in part]
            except BrokenProcessPool as e:
                self.close()
                raise RuntimeError(f"a grading worker process died: {e}") from None
        self.checked += len(results)
        self.timeouts += sum(t for _, t in results)
        return [Verdict(ok, e, t) for (ok, t), e in zip(results, extracted, strict=True)]


def grade(outputs: Sequence[str], golds: Sequence[str | Sequence[str]], workers: int = 0,
          timeout_s: float = 5.0, fallback: AnswerFallback = "none") -> list[Verdict]:
    """One-shot convenience wrapper around ``Grader``."""
    with Grader(workers=workers, timeout_s=timeout_s, fallback=fallback) as g:
        return g.grade(outputs, golds)
