"""Skill trees: siblings repeating a name (the published EvalTree MATH tree has 13) are merged or refused."""

from __future__ import annotations

import json

import pytest

from skill_distill.io import DataError
from skill_distill.skill_tree import SkillTree

TREE = {"name": "root", "children": [
    {"name": "A", "children": [{"name": "a1"}, {"name": "a2"}]},
    {"name": "B"},
    {"name": "A", "children": [{"name": "a2"}, {"name": "a3"}]},
    {"name": "B"},
]}


def test_repeated_sibling_names_are_merged_with_their_children():
    tree = SkillTree.from_dict(TREE)
    assert tree.leaf_chains == [("A", "a1"), ("A", "a2"), ("A", "a3"), ("B",)]
    assert tree.merged_siblings == 2


def test_repeated_sibling_names_can_be_refused():
    with pytest.raises(DataError, match=r"duplicate child name 'A' under 'root'; rename one"):
        SkillTree.from_dict(TREE, duplicate_siblings="error")


def test_the_published_evaltree_loads(shared_dir):
    tree = SkillTree.load("asset:tree/evaltree_math_full", "asset:tree/evaltree_display_names")
    assert tree.merged_siblings == 13
    # 3,395 leaves as published, 13 of them repeats of a sibling (two repeats are internal nodes with children)
    assert len(tree.leaf_chains) == 3382
    assert tree.depth == 12
    # the display-name map covers 2,118 of the leaves (the rest keep their long names)
    assert sum(c[-1] in tree.display_names for c in tree.leaf_chains) == 2118


@pytest.mark.parametrize("levels", [150, 1500])
def test_a_pathologically_deep_tree_is_one_line(tmp_path, levels):
    """A 1,500-level tree file ended in a RecursionError traceback (issue 28); 150 levels parse by JSON but are
    past the tree's depth limit. Both are one DataError line naming the file."""
    # written as text: json.dumps itself cannot encode 1,500 levels
    text = "".join(f'{{"name": "level {i}", "children": [' for i in range(levels)) + '{"name": "leaf"}'
    path = tmp_path / "deep.json"
    path.write_text(text + "]}" * levels)
    with pytest.raises(DataError, match=rf"^{path}: ") as e:
        SkillTree.load(path)
    assert "\n" not in str(e.value)
    shallow = {"name": "root", "children": [{"name": "a", "children": [{"name": "b"}]}]}
    path.write_text(json.dumps(shallow))
    assert SkillTree.load(path).leaf_chains == [("a", "b")]
