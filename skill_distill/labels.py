"""Skill chains from a label field instead of an LLM: MATH's ``subject``, OlympiadBench's ``subfield``.

Used by the ``attribute`` stage (``label_field``) and by evaluation sets with a labelled skills source
(docs/METHOD.md §2.6).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from skill_distill.io import DataError
from skill_distill.skill_tree import Chain, SkillTree, format_chain, parse_chain

log = logging.getLogger(__name__)

MATH_SUBJECT_TO_SKILL_MIX: dict[str, list[str]] = {
    "Prealgebra": ["Pre-Algebra"],
    "Algebra": ["Algebra"],
    "Intermediate Algebra": ["Inter-Algebra"],
    "Geometry": ["Geometry understanding"],
    "Number Theory": ["Number Theory"],
    "Precalculus": ["Precalculus"],
    "Counting & Probability": ["Probability"],
}
"""MATH ``subject`` -> topic of ``skill_mix.json`` (the 7 MATH subjects are its 7 topics)."""


def tree_from_labels(rows: Sequence[dict], field: str, name: str = "skills",
                     source: str = "<rows>") -> tuple[SkillTree, dict[str, Chain]]:
    """A skill tree built from the distinct values of a label column, and the identity label map onto it.

    Each value is one chain: ``"Geometry"`` a topic leaf under the root, ``"Algebra->Linear equations"`` a leaf
    under its topic (``skill_tree.CHAIN_SEPARATOR``); a list value contributes each of its items. Children are in
    sorted order, so the tree does not depend on row order. Raises DataError for a row without the field or a
    column with no value.
    """
    chains: set[Chain] = set()
    for i, row in enumerate(rows):
        if field not in row or row[field] is None:
            raise DataError(f"{source}: row {i + 1}: missing label field {field!r}; set label_field to a field of "
                            "the corpus (the pool keeps it with source.keep_fields)")
        values = row[field] if isinstance(row[field], list) else [row[field]]
        chains.update(c for c in (parse_chain(str(v)) for v in values) if c)
    if not chains:
        raise DataError(f"{source}: label field {field!r} holds no value to build a tree from")

    def node(prefix: Chain) -> dict:
        kids = sorted({c[len(prefix)] for c in chains if len(c) > len(prefix) and c[:len(prefix)] == prefix})
        label = prefix[-1] if prefix else name
        return {"name": label, "children": [node(prefix + (k,)) for k in kids]} if kids else {"name": label}

    tree = SkillTree.from_dict(node(()), f"{source}[{field}]")
    return tree, {format_chain(c): c for c in sorted(chains)}


def chains_from_labels(rows: Sequence[dict], field: str, label_map: dict[str, Any], tree: SkillTree,
                       on_unknown: Literal["error", "drop"] = "error", id_field: str | None = "id",
                       source: str = "<rows>") -> tuple[dict[str, list[Chain]], SkillTree, dict]:
    """Chains from a label field instead of an LLM (MATH ``subject``, OlympiadBench ``subfield``).

    ``label_map`` maps each field value to one chain (a list of names or an ``"A->b"`` string); a row whose
    value is a list gets one chain per value. If every mapped chain ends at a leaf the labels are leaf-level and
    ``tree`` is used as is; otherwise every mapped chain must have the same length d (ending at internal nodes,
    or at leaves of that depth) and the tree is cut at depth d, so the labels are leaves of the cut tree
    ("topic" level when d == 1). Rows are keyed by ``id_field`` (None: the row index as a string).

    Returns (id -> chains, tree used, info with ``level``, ``depth``, ``cut``, counts and unknown labels).
    Raises DataError for a mapped chain missing from the tree, mixed depths, a missing field, a duplicate id,
    and (with ``on_unknown="error"``) a value absent from ``label_map``; ``"drop"`` counts such rows instead.
    """
    if not label_map:
        raise DataError(f"{source}: label_map is empty; map each {field!r} value to a chain of {tree.source}")
    mapped: dict[str, Chain] = {}
    for value, raw in label_map.items():
        chain = parse_chain(raw) if isinstance(raw, str) else tuple(str(x) for x in raw)
        if not chain or chain not in tree:
            raise DataError(f"label_map[{value!r}]: chain {format_chain(chain)!r} is not a node of {tree.source}; "
                            f"topics are {tree.topics()[:8]}")
        mapped[str(value)] = chain
    if all(tree.is_leaf_chain(c) for c in mapped.values()):
        tree_used, level, depth, cut = tree, "leaf", None, False
    else:
        depths = {len(c) for c in mapped.values()}
        if len(depths) > 1:
            by_depth = {d: next(v for v, c in mapped.items() if len(c) == d) for d in sorted(depths)}
            raise DataError(f"label_map: chains end at different depths {sorted(depths)} (e.g. "
                            f"{', '.join(f'{v!r}: depth {d}' for d, v in by_depth.items())}); map every label to "
                            "a leaf, or every label to a node of one depth")
        depth = depths.pop()
        tree_used, level, cut = tree.cut(depth), ("topic" if depth == 1 else f"depth-{depth}"), True
        log.info("labels from %r end at depth %d: the tree is cut there and attribution is %s-level, not leaf-level",
                 field, depth, level)
    chains: dict[str, list[Chain]] = {}
    unknown: dict[str, int] = {}
    for i, row in enumerate(rows):
        where = f"{source}: row {i + 1}"
        if field not in row or row[field] is None:
            raise DataError(f"{where}: missing label field {field!r}; set label_field to a field of the corpus")
        if id_field is None:
            ex_id = str(i)
        elif id_field not in row:
            raise DataError(f"{where}: missing id field {id_field!r}; set the id field (or null to number rows)")
        else:
            ex_id = str(row[id_field])
        if ex_id in chains:
            raise DataError(f"{where}: duplicate id {ex_id!r}; ids must be unique")
        values = row[field] if isinstance(row[field], list) else [row[field]]
        found: list[Chain] = []
        for v in map(str, values):
            if v in mapped:
                if mapped[v] not in found:
                    found.append(mapped[v])
            elif on_unknown == "error":
                raise DataError(f"{where}: {field} value {v!r} is not in label_map (known: "
                                f"{', '.join(sorted(mapped)[:8])}); add it, or set on_unknown_label: drop")
            else:
                unknown[v] = unknown.get(v, 0) + 1
        if found:
            chains[ex_id] = found
    info = {"level": level, "depth": depth if cut else tree_used.depth, "cut": cut, "field": field,
            "examples": len(rows), "labelled": len(chains), "unknown_labels": unknown}
    return chains, tree_used, info
