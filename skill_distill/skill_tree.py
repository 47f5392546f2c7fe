"""The hierarchical skill taxonomy: loading, validation, chains, depth cuts and display names.

A tree is JSON ``{"name": ..., "children": [...]}``; a node without children is a leaf skill. A *chain* is the
root-excluded path of node names to a node, e.g. ``("Probability", "counting principles")``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from skill_distill.io import DataError, read_json

log = logging.getLogger(__name__)

Chain = tuple[str, ...]
CHAIN_SEPARATOR = "->"


@dataclass
class SkillNode:
    name: str
    children: list[SkillNode] = field(default_factory=list)

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def child(self, name: str) -> SkillNode | None:
        for c in self.children:
            if c.name == name:
                return c
        return None


class SkillTree:
    """An immutable, validated skill tree.

    Raises DataError (with the source and the path of the offending node) for empty names or nodes that are not
    ``{"name", "children"}`` objects. Siblings that share a name are merged into one node (their children joined,
    recursively) unless ``duplicate_siblings="error"``: a walk that picks children by name cannot tell them apart,
    and the published EvalTree MATH tree has 13 such pairs (docs/METHOD.md §1). ``merged_siblings`` counts them.
    """

    def __init__(self, root: SkillNode, source: str = "<tree>", display_names: dict[str, str] | None = None):
        self.root = root
        self.source = source
        self.display_names = dict(display_names or {})
        self.merged_siblings = 0
        self._nodes: dict[Chain, SkillNode] = {}
        self._index(root, ())
        self.leaf_chains: list[Chain] = [c for c, n in self._nodes.items() if c and n.is_leaf]
        self._leaf_by_name: dict[str, list[Chain]] = {}
        for c in self.leaf_chains:
            self._leaf_by_name.setdefault(c[-1], []).append(c)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, obj: dict, source: str = "<tree>", display_names: dict[str, str] | None = None,
                  duplicate_siblings: str = "merge") -> SkillTree:
        if duplicate_siblings not in {"merge", "error"}:
            raise ValueError(f"duplicate_siblings must be 'merge' or 'error', not {duplicate_siblings!r}")
        merged: list[str] = []
        root = _parse_node(obj, source, (), merged if duplicate_siblings == "merge" else None)
        tree = cls(root, source, display_names)
        tree.merged_siblings = len(merged)
        if merged:
            log.warning("%s: merged %d sibling nodes that repeat a name (first: %r)", source, len(merged),
                        merged[0].rsplit(CHAIN_SEPARATOR, 1)[-1][:80])
        return tree

    @classmethod
    def load(cls, path: str | os.PathLike, display_names: str | os.PathLike | None = None,
             duplicate_siblings: str = "merge") -> SkillTree:
        """Load a tree file, optionally with a display-name map (EvalTree's ``capability_to_distinction.json``:
        long name -> short name or list of short names). Either may be a pinned asset (``asset:tree/skill_mix``)."""
        from skill_distill.assets import resolve

        path = resolve(str(path))
        names = None
        if display_names is not None:
            display_names = resolve(str(display_names))
            raw = read_json(display_names, "skill display-name map")
            if not isinstance(raw, dict):
                raise DataError(f"{display_names}: expected a JSON object mapping skill names to display names")
            names = {k: (v[0] if isinstance(v, list) and v else str(v)) for k, v in raw.items()}
        return cls.from_dict(read_json(path, "skill tree"), str(path), names, duplicate_siblings)

    def _index(self, node: SkillNode, chain: Chain) -> None:
        self._nodes[chain] = node
        for c in node.children:
            self._index(c, chain + (c.name,))

    # ---- queries --------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.root.name

    @property
    def depth(self) -> int:
        """Length of the longest chain (a root with leaf children has depth 1)."""
        return max((len(c) for c in self.leaf_chains), default=0)

    def node(self, chain: Sequence[str]) -> SkillNode:
        try:
            return self._nodes[tuple(chain)]
        except KeyError:
            raise DataError(f"skill chain {format_chain(chain)!r} is not in the tree {self.source}") from None

    def __contains__(self, chain: Sequence[str]) -> bool:
        return tuple(chain) in self._nodes

    def all_chains(self) -> list[Chain]:
        """Every non-root node as a chain, in depth-first order."""
        return [c for c in self._nodes if c]

    def is_leaf_chain(self, chain: Sequence[str]) -> bool:
        node = self._nodes.get(tuple(chain))
        return node is not None and bool(chain) and node.is_leaf

    def leaves_named(self, name: str) -> list[Chain]:
        return list(self._leaf_by_name.get(name, []))

    def topics(self) -> list[str]:
        return [c.name for c in self.root.children]

    def cut(self, max_depth: int) -> SkillTree:
        """A copy with every node deeper than ``max_depth`` removed: nodes at ``max_depth`` become leaves."""
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")

        def copy(n: SkillNode, d: int) -> SkillNode:
            return SkillNode(n.name, [] if d >= max_depth else [copy(c, d + 1) for c in n.children])

        return SkillTree(copy(self.root, 0), f"{self.source}[max_depth={max_depth}]", self.display_names)

    def truncate_chain(self, chain: Sequence[str], max_depth: int | None) -> Chain:
        return tuple(chain) if max_depth is None else tuple(chain)[:max_depth]

    def display(self, name: str) -> str:
        return self.display_names.get(name, name)

    def to_dict(self) -> dict:
        def rec(n: SkillNode) -> dict:
            return {"name": n.name, "children": [rec(c) for c in n.children]} if n.children else {"name": n.name}

        return rec(self.root)

    def validate_chain(self, chain: Sequence[str], where: str) -> Chain:
        """Return ``chain`` as a tuple if it names a leaf of this tree, else raise DataError mentioning ``where``."""
        c = tuple(chain)
        if c not in self._nodes:
            # name the first step that leaves the tree: that is what the user has to fix
            for i in range(1, len(c) + 1):
                if c[:i] not in self._nodes:
                    parent = self._nodes[c[: i - 1]]
                    options = ", ".join(repr(x.name) for x in parent.children[:6])
                    raise DataError(
                        f"{where}: unknown skill {c[i - 1]!r} in chain {format_chain(c)!r} "
                        f"(children of {parent.name!r} are {options}{', ...' if len(parent.children) > 6 else ''})"
                    )
        if not self._nodes[c].is_leaf or not c:
            raise DataError(f"{where}: chain {format_chain(c)!r} stops at an internal node; chains must end at a leaf")
        return c

    def __repr__(self) -> str:
        return f"SkillTree({self.name!r}, leaves={len(self.leaf_chains)}, depth={self.depth}, source={self.source!r})"


MAX_TREE_DEPTH = 100
"""Levels below the root a tree may have (far above any real taxonomy, far below Python's recursion limit)."""


def _parse_node(obj: object, source: str, path: Chain, merged: list[str] | None = None) -> SkillNode:
    """Parse and validate one node; siblings repeating a name are merged (and listed in ``merged``), or refused
    when ``merged`` is None."""
    if len(path) > MAX_TREE_DEPTH:  # the walks recurse per level; Python's recursion limit would end them
        raise DataError(f"{source}: the tree is deeper than {MAX_TREE_DEPTH} levels (at {format_chain(path[:3])} "
                        f"-> ...); a skill tree has a few levels (the paper's has 3): check how the file was built")
    where = f"{source}: node {format_chain(path) or '<root>'}"
    if not isinstance(obj, dict) or "name" not in obj:
        raise DataError(f"{where}: expected an object with a 'name' (and optional 'children')")
    name = obj["name"]
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where}: empty or non-string skill name under {format_chain(path) or 'the root'}")
    children_raw = obj.get("children") or []
    if not isinstance(children_raw, list):
        raise DataError(f"{where}: 'children' must be a list")
    children: dict[str, SkillNode] = {}
    for raw in children_raw:
        child_name = str(raw.get("name", "?")) if isinstance(raw, dict) else "?"
        child = _parse_node(raw, source, path + (child_name,), merged)
        if child.name not in children:
            children[child.name] = child
            continue
        if merged is None:
            raise DataError(f"{source}: duplicate child name {child.name!r} under {format_chain(path) or name!r}; "
                            "rename one of them")
        merged.append(format_chain(path + (child.name,)))
        children[child.name] = _merge_nodes(children[child.name], child)
    return SkillNode(name, list(children.values()))


def _merge_nodes(a: SkillNode, b: SkillNode) -> SkillNode:
    """One node for two same-named siblings: children joined in order, same-named children merged recursively."""
    children = {c.name: c for c in a.children}
    for c in b.children:
        children[c.name] = _merge_nodes(children[c.name], c) if c.name in children else c
    return SkillNode(a.name, list(children.values()))


def format_chain(chain: Iterable[str], sep: str = CHAIN_SEPARATOR) -> str:
    return sep.join(chain)


def parse_chain(text: str, sep: str = CHAIN_SEPARATOR) -> Chain:
    return tuple(part.strip() for part in text.split(sep) if part.strip())
