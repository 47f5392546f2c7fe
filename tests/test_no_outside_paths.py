"""Nothing in the code, configs or docs depends on a path outside the repository: no ``../shared`` (the
development machines' data mirror, reached only through ``SKILL_DISTILL_DATA``), no ``REPO.parent / "shared"``,
no retired variables, and method citations point at the project's own ``docs/METHOD.md``."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".cache", "runs", "outputs", "lightning_logs",
             "node_modules"}
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".sh", ".toml", ".cfg", ".ini", ".txt", ".json", ".jsonl"}
TEXT_NAMES = {"Makefile", "run"}
# the test set-up and the CI/Makefile entry points set SKILL_DISTILL_DATA from ../shared when it exists
MAY_NAME_THE_MIRROR = {"tests/conftest.py", ".ci/run", "Makefile"}
THIS = "tests/test_no_outside_paths.py"

RULES = [
    ("names ../shared", re.compile(r"\.\./shared\b")),
    ("builds a path to a sibling 'shared' folder", re.compile(r"""(parent|parents\[\d+\])\s*/\s*["']shared["']""")),
    ("uses a retired variable (use SKILL_DISTILL_DATA)", re.compile(r"SKILL_DISTILL_(SHARED|BENCHMARKS)\b")),
    ("cites a METHOD.md outside docs/ (cite docs/METHOD.md §N)", re.compile(r"(?<![\w/.-])METHOD\.md")),
    ("cites MACHINES.md, which is not part of the repository (state the fact)", re.compile(r"MACHINES\.md")),
]


# a directory of one machine in a shipped data file or config (a recorded run's inputs, a profile's settings): the
# file then only works in the checkout it was made in (issue 28); placeholders like /path/to/... are fine
MACHINE_PATH = re.compile(r"""(?:^|[\s:\[,"'=])"""
                          r"""(/(?:work|home|root|tmp|Users|mnt|scratch|opt|var|srv|private)/[^\s"']*)""")
DATA_SUFFIXES = {".json", ".jsonl", ".yaml", ".yml"}


def files(root: Path):
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in names:
            path = Path(folder, name)
            if path.suffix in TEXT_SUFFIXES or name in TEXT_NAMES:
                yield path


def outside_references(root: Path) -> list[str]:
    """``file:line: what`` for every reference to something outside the repository under ``root``."""
    found = []
    for path in files(root):
        rel = path.relative_to(root).as_posix()
        if rel == THIS:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            machine_path = MACHINE_PATH.search(line) if path.suffix in DATA_SUFFIXES else None
            if machine_path:
                found.append(f"{rel}:{number}: names a directory of one machine: {machine_path.group(1)[:100]}")
            for what, pattern in RULES:
                if pattern.search(line) and not (what == RULES[0][0] and rel in MAY_NAME_THE_MIRROR):
                    found.append(f"{rel}:{number}: {what}: {line.strip()[:100]}")
    return found


def test_the_repository_references_nothing_outside_itself():
    found = outside_references(REPO)
    assert not found, "\n".join(found)


def test_the_check_finds_each_kind_of_outside_reference(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "a.yaml").write_text("tree: ../shared/skill_trees/skill_mix.json\n"
                                                 "# the paper's rate (METHOD.md §6)\n")
    (tmp_path / "b.py").write_text('SHARED = REPO.parent / "shared"\nos.environ["SKILL_DISTILL_BENCHMARKS"]\n'
                                   "# see MACHINES.md\nROOT = Path(__file__).parents[2] / 'shared'\n")
    (tmp_path / "ok.md").write_text("See docs/METHOD.md §7 and ../docs/METHOD.md; SKILL_DISTILL_DATA=/data/mirror\n")
    (tmp_path / "Makefile").write_text("SKILL_DISTILL_DATA=$(abspath ../shared)\n")
    (tmp_path / "run.json").write_text('{"pool": "/work/main/data/pool.jsonl",\n "model": "/path/to/model",\n'
                                       ' "url": "http://127.0.0.1:8000/v1", "tree": "data/tree.json"}\n')
    (tmp_path / "configs" / "c.yaml").write_text("student: /home/me/ckpt/final\npool: data/pool.jsonl\n")
    found = sorted(f.split(": ")[0] for f in outside_references(tmp_path))
    assert found == ["b.py:1", "b.py:2", "b.py:3", "b.py:4", "configs/a.yaml:1", "configs/a.yaml:2",
                     "configs/c.yaml:1", "run.json:1"]
