"""Skill trees: siblings repeating a name (the published EvalTree MATH tree has 13) are merged or refused."""

from __future__ import annotations

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
