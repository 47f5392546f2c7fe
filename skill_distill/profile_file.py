"""Reading a student profile (``profile.json`` of the profile stage, docs/METHOD.md §3.3): the one reader.

Kept apart from the profile stage (``skill_distill/profile.py``) so that selection, which the stage calls for its
degeneracy warning, reads profiles without importing the stage.
"""

from __future__ import annotations

import os
from typing import Literal

from skill_distill.io import DataError, read_json
from skill_distill.skill_tree import Chain, SkillTree, parse_chain

ProfileValue = Literal["accuracy", "accuracy_shrunk", "judged", "correct", "samples", "ci_low", "ci_high"]


def _profile_nodes(path: str | os.PathLike) -> list[dict]:
    """The ``nodes`` rows of a profile.json, each with a ``chain`` (the one place that reads the file)."""
    data = read_json(path, "student profile")
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, list):
        raise DataError(f"{path}: not a student profile (no 'nodes' list); run the profile stage first")
    for i, node in enumerate(nodes):
        if not isinstance(node, dict) or "chain" not in node:
            raise DataError(f"{path}: nodes[{i}] needs a 'chain' field")
    return nodes


def load_profile(path: str | os.PathLike, tree: SkillTree, value: ProfileValue = "accuracy") -> dict[Chain, float]:
    """``{leaf chain: value}`` for every leaf of ``tree`` the profile judged (default: its accuracy).

    ``tree`` may be a depth cut of the profiled tree: its leaves are then internal nodes of the profile, which
    carry their own counts. Leaves without judged problems are absent (selection treats them as unsampled).
    ``value="judged"`` gives the number of problems behind each accuracy.

    Raises DataError when the file is not a profile, lacks ``value`` (``accuracy_shrunk`` needs shrinkage > 0),
    or shares no node with ``tree``.
    """
    by_chain: dict[Chain, dict] = {parse_chain(str(row["chain"])): row for row in _profile_nodes(path)}
    out: dict[Chain, float] = {}
    for leaf in tree.leaf_chains:
        row = by_chain.get(leaf)
        if row is None:
            continue
        if value not in row:
            raise DataError(f"{path}: node {row['chain']!r} has no {value!r}"
                            f"{' (profile was built without shrinkage)' if value == 'accuracy_shrunk' else ''}")
        out[leaf] = row[value]
    if not out and len(by_chain) > 1:
        raise DataError(f"{path}: none of its skills is a leaf of {tree.source}; profile and tree do not match")
    return out


def read_profile_nodes(path: str | os.PathLike, tree: SkillTree, value: ProfileValue = "accuracy"
                       ) -> tuple[dict[Chain, float], dict[Chain, int]]:
    """profile.json ``{"nodes": [{"chain": "A->b", "judged", "accuracy", ...}]}`` -> ``value`` (``accuracy`` or
    ``accuracy_shrunk``) and judged count of every node (leaves and internal nodes) with a judged example. Nodes
    outside the tree, or a judged node without ``value``, raise DataError."""
    accuracy: dict[Chain, float] = {}
    judged: dict[Chain, int] = {}
    for i, node in enumerate(_profile_nodes(path)):
        chain = parse_chain(str(node["chain"]))
        if not chain:
            continue  # the root
        if chain not in tree:
            raise DataError(f"{path}: nodes[{i}] names {node['chain']!r}, which is not in the tree {tree.source}; "
                            "was the profile made with another tree?")
        count = int(node.get("judged") or 0)
        judged[chain] = count
        if count > 0 and value != "accuracy" and node.get(value) is None:
            raise DataError(f"{path}: nodes[{i}] ({node['chain']!r}) has no {value!r}; rebuild the profile with "
                            "shrinkage > 0 (profile or merge-profile --shrinkage K), or set "
                            "selection.profile_value: accuracy")
        if count > 0 and node.get(value) is not None:
            accuracy[chain] = float(node[value])
    return accuracy, judged
