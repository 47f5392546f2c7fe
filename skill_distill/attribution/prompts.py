"""The attribution prompt (docs/METHOD.md §2): the project's template, the reference scripts' template
(``preset: paper``) and the check of a user's template."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Literal

from skill_distill.io import DataError, read_text

DEFAULT_PROMPT_TEMPLATE = """\
Below are a math problem and its written solution. Identify the mathematical skills the solution relies on. \
The skills form a taxonomy that we go through one level at a time.

### Problem
{problem}

### Solution
{solution}

### Current skill category
{path}

### Sub-skills of this category
{children}

Which of these sub-skills does the solution use? Include every sub-skill that plays a part, even basic ones \
such as routine arithmetic; several may apply. Copy each name exactly as it is written in the list above.
Reply with a JSON list of names and nothing else, for example: ["<sub-skill>", "<another sub-skill>"]"""
"""The project's attribution prompt. Placeholders: {problem}, {solution}, {path} (root-to-node names joined by
" -> "), {node} (the current node), {children} ("- name" lines) or {numbered_children} ("1. name" lines)."""

PAPER_PROMPT_TEMPLATE = """\
Given the following Math problem:

Q&A: {problem}
{solution}

Which of the following skills are involved to understanding or solving the problem? Even the most basic skills \
such as simple addition and subtraction must be taken into account. You can select multiple options if needed. \
Just return a list of skill names.

Skills:
{children}

Answer as a Python list of strings."""
"""The reference scripts' prompt (docs/METHOD.md, appendix): ``Q&A: {qa_input}`` with ``qa_input = problem + "\n" +
solution``; no path, no system prompt. The default template of ``preset: paper``."""

AttributionPreset = Literal["project", "paper"]
"""``project`` (default): the project's prompt (with the current path), lenient parsing, a shared input budget,
chains in tree order. ``paper``: the reference scripts' exact behaviour (docs/METHOD.md, appendix): their prompt,
only the solution truncated, only exact child names from the bracketed list, chains in reply order."""

TEMPLATE_FIELDS = {"problem", "solution", "path", "node", "children", "numbered_children"}
NO_SOLUTION = "(no written solution is available; judge from the problem)"


def check_template(template: str) -> str:
    """Return ``template`` if its placeholders are known and it shows the problem and the children, else raise
    DataError. Literal braces in a template must be doubled (``{{``)."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise DataError(f"prompt_template: {e}; double literal braces as {{{{ and }}}}") from None
    unknown = names - TEMPLATE_FIELDS
    if unknown:
        raise DataError(f"prompt_template: unknown placeholder(s) {sorted(unknown)}; "
                        f"allowed: {', '.join('{' + f + '}' for f in sorted(TEMPLATE_FIELDS))}")
    if "problem" not in names or not names & {"children", "numbered_children"}:
        raise DataError("prompt_template: must contain {problem} and {children} (or {numbered_children})")
    return template


def load_template(template: str | None, preset: AttributionPreset = "project") -> str:
    """The preset's default template, an inline template, or the contents of a template file (a value without
    braces naming an existing file)."""
    if template is None:
        return PAPER_PROMPT_TEMPLATE if preset == "paper" else DEFAULT_PROMPT_TEMPLATE
    if "{" not in template and Path(template).is_file():
        template = read_text(template, "prompt template file")
    return check_template(template)
