"""The project's module graph, read statically with ``ast`` (every import, module-level or inside a function):
Lightning stays out of ``skill_distill``, and no two project modules import each other, even lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("skill_distill", "lightning_modules", "datamodules", "callbacks", "experiments")
LIGHTNING_SIDE = ("lightning_modules", "datamodules", "callbacks", "experiments", "train", "train_cli")
LIGHTNING = ("lightning", "pytorch_lightning", "lightning_fabric")


def project_modules() -> dict[str, Path]:
    mods = {"train": REPO / "train.py", "train_cli": REPO / "train_cli.py"}
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            parts = f.relative_to(REPO).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(project module -> project modules it imports, project module -> outside top-level packages it imports)."""
    mods = project_modules()

    def project(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    outside: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps, ext = set(), set()
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                # ``from pkg import sub`` imports the submodule; ``from pkg import name`` the package itself
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for name in names:
                target = project(name)
                if target is None:
                    ext.add(name.split(".")[0])
                elif target != mod:
                    deps.add(target)
        graph[mod], outside[mod] = deps, ext
    return graph, outside


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module ``start`` imports, directly or not, with one import path to it."""
    paths, todo = {start: [start]}, [start]
    while todo:
        mod = todo.pop()
        for dep in sorted(graph[mod]):
            if dep not in paths:
                paths[dep] = paths[mod] + [dep]
                todo.append(dep)
    return paths


def test_the_graph_is_read():  # the checks below would pass vacuously on an empty or unresolved graph
    graph, outside = import_graph()
    assert "skill_distill.evaluation" in graph["callbacks.skill_eval"]
    assert "skill_distill.batch_contract" in graph["lightning_modules.causal_lm"]  # a module-level import
    assert "datamodules.batching" not in graph["lightning_modules.causal_lm"]  # the model's batch contract is neutral
    assert "skill_distill.generation.factory" in graph["skill_distill.generation.child_process"]  # a lazy one
    assert "lightning" in outside["callbacks.checkpointing"]


def with_parent_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` too (``lightning_modules/__init__`` imports
    Lightning): those edges count for what a module drags in, not for circles."""
    out = {}
    for mod, deps in graph.items():
        out[mod] = set(deps)
        for dep in deps:
            parts = dep.split(".")
            out[mod].update(p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in graph and p != mod)
    return out


def dispatched_stage_modules() -> set[str]:
    """The modules ``python -m skill_distill`` imports by name (``importlib``, invisible to ``import_graph``)."""
    from skill_distill.__main__ import STAGES

    return {module for module, _, _ in STAGES.values()}


def test_the_domain_cli_reaches_the_lightning_side_only_for_the_export_stage():
    """``python -m skill_distill export`` reads a Lightning-written checkpoint: the one stage whose module lives on
    the Lightning side (``lightning_modules.checkpoint_export``). That module reads the files without importing
    Lightning itself (only its package's ``__init__`` does); any other stage on the Lightning side fails here."""
    graph, outside = import_graph()
    modules = dispatched_stage_modules()
    assert modules <= set(graph), sorted(modules - set(graph))  # every string names a real module
    lightning_side = {m for m in modules if m.split(".")[0] in LIGHTNING_SIDE}
    assert lightning_side == {"lightning_modules.checkpoint_export"}
    for mod in lightning_side:
        reached = reachable(graph, mod)  # without parent packages: what the stage's own code imports
        assert not any(outside[dep] & set(LIGHTNING) for dep in [mod, *reached]), mod


def test_no_skill_distill_module_reaches_lightning():
    graph, outside = import_graph()
    graph = with_parent_packages(graph)
    # the stage table's importlib strings are edges too (the export stage is checked by the test above)
    graph["skill_distill.__main__"] |= dispatched_stage_modules() - {"lightning_modules.checkpoint_export"}
    bad = []
    for mod in graph:
        if not mod.startswith("skill_distill"):
            continue
        for dep, path in reachable(graph, mod).items():
            if dep.split(".")[0] in LIGHTNING_SIDE or outside[dep] & set(LIGHTNING):
                bad.append(" -> ".join(path) + (f" -> {sorted(outside[dep] & set(LIGHTNING))[0]}"
                                                 if outside[dep] & set(LIGHTNING) else ""))
    assert not bad, ("skill_distill must not import Lightning, directly or through the Lightning side:\n"
                     + "\n".join(bad))


def test_no_import_circles():
    graph, _ = import_graph()
    circles = sorted({" <-> ".join(sorted(set(path[path.index(mod):] if mod in path else path)))
                      for mod in graph for dep, path in reachable(graph, mod).items() if mod in graph[dep]})
    assert not circles, "import circles among the project's modules:\n" + "\n".join(circles)


@pytest.mark.slow
def test_cli_help_does_not_import_vllm():
    code = ("import sys\nfrom skill_distill.__main__ import main\n"
            "for argv in (['--help'], ['evaluate', '--help'], ['attribute', '--help'], ['profile', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'lightning')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_train_py_imported_again_by_a_spawned_child_loads_nothing_heavy():
    """A grader worker or a launched rank imports train.py again as its ``__main__`` ("spawn"): that import must not
    load torch or Lightning (seconds of work, before the child's parent-death guard is armed)."""
    code = ("import runpy, sys; runpy.run_path('train.py', run_name='__mp_main__'); "
            "print(sorted(m for m in ('torch', 'lightning', 'transformers', 'train_cli') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
