"""The README's lists stay true: it names every shipped config and every callback class, every repository path it
names exists, and the relative links of the README and docs/ resolve. A brace group in a backticked path names each
of its spellings (`configs/qwen3_{4b,8b}/base.yaml` names both models' base files)."""

from __future__ import annotations

import importlib
import inspect
import itertools
import re
from pathlib import Path

import lightning as L

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "results" / "evidence" / "results.md"]
# where a backticked name in the README is a repository path (stage outputs such as `pool.jsonl` are not)
REPO_ROOTS = ("configs/", "skill_distill/", "datamodules/", "lightning_modules/", "callbacks/", "scripts/",
              "benchmarks/", "experiments/", "tests/", "docs/", "results/", "data/")


def expand_braces(text: str) -> list[str]:
    """Every spelling of ``text`` with its ``{a,b}`` groups expanded (no nesting)."""
    parts = re.split(r"\{([^{}]*,[^{}]*)\}", text)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def backticked(text: str) -> set[str]:
    """Every word of every backticked span, brace groups expanded (``--config a.yaml`` gives ``a.yaml``)."""
    names = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        for word in span.split():
            names.update(expand_braces(word.strip(",;()")))
    return names


def shipped_configs() -> list[str]:
    return sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))


def callback_classes() -> list[str]:
    """Names of the Lightning callbacks defined under callbacks/ (helpers and loggers are not callbacks)."""
    found = set()
    for path in sorted((REPO / "callbacks").glob("*.py")):
        module = importlib.import_module(f"callbacks.{path.stem}")
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__ and issubclass(obj, L.Callback):
                found.add(name)
    return sorted(found)


def test_expand_braces():
    assert expand_braces("configs/qwen3_{4b,8b}/skill_sft_{16k,32k}.yaml") == [
        "configs/qwen3_4b/skill_sft_16k.yaml", "configs/qwen3_4b/skill_sft_32k.yaml",
        "configs/qwen3_8b/skill_sft_16k.yaml", "configs/qwen3_8b/skill_sft_32k.yaml"]
    assert expand_braces("configs/quickstart.yaml") == ["configs/quickstart.yaml"]


def test_the_readme_names_every_shipped_config():
    named = backticked(README.read_text(encoding="utf-8"))
    configs = shipped_configs()
    assert "configs/runs/closed_loop.yaml" in configs  # the walk finds nested configs
    missing = [c for c in configs if c not in named]
    assert not missing, ("README.md's config table does not name: " + ", ".join(missing)
                         + " (add a row, or add the file to a row as `configs/<dir>/<file>.yaml`)")


def test_the_readme_names_every_callback_class():
    text = README.read_text(encoding="utf-8")
    classes = callback_classes()
    assert {"SkillEvalCallback", "ResumableCheckpoint", "PreemptionCallback"} <= set(classes)
    missing = [c for c in classes if f"`{c}`" not in text]
    assert not missing, ("README.md does not name the callback class(es) " + ", ".join(missing)
                         + " of callbacks/ (add each, backticked, to the list of callbacks under the stage table)")


def test_every_repository_path_the_readme_names_exists():
    named = backticked(README.read_text(encoding="utf-8"))
    stale = [n for n in sorted(named) if n.startswith(REPO_ROOTS) and not (REPO / n.rstrip(".")).exists()]
    assert not stale, "README.md names repository paths that do not exist: " + ", ".join(stale)


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if not re.match(r"[a-z]+://", target) and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)}: ({target})")
    assert not broken, "these docs link to a file that does not exist:\n" + "\n".join(broken)
