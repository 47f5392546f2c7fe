"""The pool as index arrays over the working tree's leaves, shared by every strategy."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from skill_distill.io import DataError
from skill_distill.skill_tree import Chain, SkillTree, format_chain, parse_chain


@dataclass
class _Pool:
    """The pool as index arrays over the working tree's leaves."""

    ids: list[str]
    leaves: list[Chain]
    leaf_rows: list[list[int]]
    """Per example, the indices of its distinct (truncated) leaves, in chain order."""
    _matrix: object = None

    def matrix(self, columns: np.ndarray | None = None):
        """Binary CSR matrix (examples x leaves); ``columns`` keeps (and renumbers) only those leaves."""
        from scipy.sparse import csr_matrix

        if self._matrix is None:
            lengths = np.fromiter((len(r) for r in self.leaf_rows), dtype=np.int64, count=len(self.leaf_rows))
            indptr = np.concatenate([[0], np.cumsum(lengths)])
            indices = np.fromiter((c for r in self.leaf_rows for c in r), dtype=np.int64, count=int(indptr[-1]))
            self._matrix = csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(self.ids), len(self.leaves)))
        return self._matrix if columns is None else self._matrix[:, np.asarray(columns)].tocsr()


def _index_pool(ids: list[str], chains_by_id: Mapping[str, Sequence[Sequence[str]]], tree: SkillTree,
                work_tree: SkillTree, max_depth: int | None, source: str | None) -> _Pool:
    leaves = list(work_tree.leaf_chains)
    leaf_index = {leaf: i for i, leaf in enumerate(leaves)}
    # each full-tree leaf -> its working-tree leaf index (the truncated chain with max_depth)
    column = {leaf: leaf_index[tree.truncate_chain(leaf, max_depth)] for leaf in tree.leaf_chains}
    rows: list[list[int]] = []
    prefix = f"{source}: " if source else ""
    for ex_id in ids:
        row: list[int] = []
        for chain in chains_by_id.get(ex_id, ()):
            chain = tuple(chain)
            i = column.get(chain)
            if i is None:  # builds the one-line error naming the unknown skill (or raises for an internal node)
                tree.validate_chain(chain, f"{prefix}example {ex_id!r}")
            if i not in row:
                row.append(i)
        rows.append(row)
    return _Pool(ids, leaves, rows)


def _resolve_only_skill(text: str, tree: SkillTree) -> Chain:
    node = parse_chain(text)
    if node and node in tree:
        return node
    names = [format_chain(c) for c in tree.all_chains()]
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
    by_leaf = [format_chain(c) for c in tree.all_chains() if node and c[-1] == node[-1]]
    suggestions = list(dict.fromkeys(by_leaf + close))[:3]
    hint = f"; close matches: {', '.join(repr(s) for s in suggestions)}" if suggestions else \
        f"; skills look like {names[0]!r}"
    raise DataError(f"selection.only_skill {text!r} is not a skill of the tree {tree.source}{hint}")


def _first_leaf(pool: _Pool, e: int, allowed_leaf: np.ndarray) -> int | None:
    for c in pool.leaf_rows[e]:
        if allowed_leaf[c]:
            return c
    return None
