"""Reading the attributor's replies (docs/METHOD.md §2): the project's lenient parsing (JSON or Python lists,
bullets, unquoted or truncated lists, case and punctuation variants) and the reference's exact parsing
(``preset: paper``: only exact child names from the bracketed list)."""

from __future__ import annotations

import ast
import json
import re
import unicodedata
from typing import Any


def normalize_name(name: str) -> str:
    """Case-, width- and whitespace-insensitive form of a skill name; surrounding quotes, markdown emphasis and
    trailing punctuation are removed."""
    s = unicodedata.normalize("NFKC", str(name)).strip()
    s = s.strip("\"'`*_ \t").rstrip(".,;:").strip("\"'`*_ \t")
    return " ".join(s.split()).casefold()


_BULLET = re.compile(r"^\s*(?:[-*\u2022+]|\d{1,3}[.)]|\(\d{1,3}\))\s+(.+?)\s*$")
_QUOTED = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'")


def _flatten(v: Any) -> list[str]:
    out: list[str] = []
    for x in v:
        if isinstance(x, (list, tuple)):
            out.extend(_flatten(x))
        elif isinstance(x, (str, int, float)):
            out.append(str(x))
    return out


def parse_reply(text: str) -> tuple[list[str], bool] | None:
    """Split a reply into candidate names.

    Returns ``(names, structured)``: ``structured`` is True for a JSON list, a Python list literal or
    bullet/numbered lines (names that then match no child are *unknown names*), False for a loose
    comma-separated or one-per-line answer (which counts as unparsable if nothing matches). Returns None for
    an empty reply or an unreadable bracketed list. A reasoning prefix ending in ``</think>`` and code
    fences are ignored; a list cut off by the token limit keeps its complete quoted items.
    """
    t = text
    if "</think>" in t:
        t = t.rsplit("</think>", 1)[1]
    t = re.sub(r"```[A-Za-z]*", "", t).strip()
    if not t:
        return None
    start = t.find("[")
    if start >= 0:
        end = t.rfind("]")
        if end > start:
            fragment = t[start:end + 1]
            for loader in (json.loads, ast.literal_eval):
                try:
                    value = loader(fragment)
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    continue
                if isinstance(value, (list, tuple)):
                    return _flatten(value), True
            inner = t[start + 1:end]
            if "[" not in inner and "]" not in inner:  # [Algebra, Geometry] without quotes
                return [p for p in (x.strip() for x in inner.split(",")) if p], True
            return None
        quoted = [a or b for a, b in _QUOTED.findall(t[start:])]  # truncated list: keep complete items
        return (quoted, True) if quoted else None
    lines = [ln for ln in t.splitlines() if ln.strip()]
    bullets = [m.group(1) for ln in lines if (m := _BULLET.match(ln))]
    if bullets:
        return bullets, True
    parts = [p.strip() for ln in lines for p in re.split(r"[,;]", ln)]
    return [p for p in parts if p], False


def interpret_reply(text: str, options: dict[str, str]) -> tuple[list[str], int, bool]:
    """Match a reply against ``options`` (normalised shown name -> child name).

    Returns (chosen child names in reply order without repeats, unknown-name count, parsable).
    """
    parsed = parse_reply(text)
    if parsed is None:
        return [], 0, False
    names, structured = parsed
    chosen: list[str] = []
    unknown = 0
    for name in names:
        child = options.get(normalize_name(name))
        if child is None:
            unknown += 1
        elif child not in chosen:
            chosen.append(child)
    if not structured and not chosen:
        return [], 0, False  # free prose, not a list
    return chosen, unknown, True


def parse_reply_exact(text: str) -> list | None:
    """The reference's parsing: the text from the first ``[`` to the last ``]`` read as a Python literal; None
    when there is no such span or it is not a list literal (the branch is then dropped)."""
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        value = ast.literal_eval(text[start:end + 1])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return list(value) if isinstance(value, (list, tuple)) else None


def interpret_reply_exact(text: str, shown_to_child: dict[str, str]) -> tuple[list[str], int, bool]:
    """``preset: paper``: (children whose shown name a reply string equals exactly, in reply order and with
    repeats, which the walk expands once each; count of other items; parsable)."""
    items = parse_reply_exact(text)
    if items is None:
        return [], 0, False
    chosen = [shown_to_child[x] for x in items if isinstance(x, str) and x in shown_to_child]
    return chosen, len(items) - len(chosen), True
