"""The selection report's tables and plot, from a real selection on the quickstart tree: every number in a row is
the selection's own (counts add up to the budget, shares to 100 %)."""

from __future__ import annotations

from pathlib import Path

from skill_distill.selection import SelectionConfig, select
from skill_distill.selection_report import plot_selection, report_markdown, selection_table, topic_table
from skill_distill.skill_tree import SkillTree

REPO = Path(__file__).resolve().parents[1]


def _selection():
    tree = SkillTree.load(REPO / "data" / "quickstart" / "tree.json")
    leaves = tree.leaf_chains
    chains = {f"x{i}": [leaves[i % len(leaves)]] for i in range(140)}  # 10 examples per leaf
    accuracy = {leaf: (0.1 if leaf[0] == "Number Theory" else 0.9) for leaf in leaves}
    accuracy.update({(t,): a for t, a in (("Number Theory", 0.1), ("Arithmetic", 0.9), ("Algebra", 0.9),
                                          ("Fractions and Percentages", 0.9))})
    config = SelectionConfig(budget=40, seed=1)
    return tree, config, select(config, list(chains), chains, tree, node_accuracy=accuracy)


def _rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_leaf_and_topic_tables_hold_the_selections_numbers():
    tree, config, result = _selection()
    leaf_rows = _rows(selection_table(result, tree))
    assert [r[0] for r in leaf_rows] == ["->".join(c) for c in tree.leaf_chains]  # tree order, every leaf
    assert sum(int(r[4]) for r in leaf_rows) == 40 and all(r[1] == "10" for r in leaf_rows)
    weak = [r for r in leaf_rows if r[0].startswith("Number Theory")]
    # accuracy, weight w = 1 / 0.1 and target share 10 / (4 x 10 + 10 x 1 / 0.9) of the four weak leaves
    assert all(r[7] == "0.1" and r[8] == "10" and r[3] == "19.6%" for r in weak) and len(weak) == 4
    topics = {r[0]: r for r in _rows(topic_table(result, tree))}
    assert sum(int(r[4]) for r in topics.values()) == 40
    assert int(topics["Number Theory"][4]) > int(topics["Arithmetic"][4])  # the weak topic is emphasised
    assert topics["Number Theory"][1] == "4" and topics["Number Theory"][7] == "0.1"
    text = report_markdown(result, tree, config, {"pool": "pool.jsonl"})
    assert text.startswith("# Selection report: skill, budget 40") and "- pool: `pool.jsonl`" in text
    assert "selected 40 of 140 pool examples (140 eligible)" in text and "## Leaves" in text


def test_plot_is_written(tmp_path):
    tree, _, result = _selection()
    path = tmp_path / "selection.png"
    plot_selection(result, tree, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
