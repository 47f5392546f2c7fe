"""The selection report's tables and plot, from a real selection on the quickstart tree: every number in a row is
the selection's own (counts add up to the budget, shares to 100 %); the pool stage's trace-length counts, reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from skill_distill.io import DataError, read_json, read_jsonl, write_json
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
    """The PNG decodes, is 11 inches wide at 110 dpi and at least 4 inches high, and shows bars of each of its three
    series (pool grey, target blue, selection red; each covers about 4 % of the image here) on a white background."""
    import matplotlib.image
    import numpy as np

    tree, _, result = _selection()
    path = tmp_path / "selection.png"
    plot_selection(result, tree, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = np.rint(matplotlib.image.imread(path)[..., :3] * 255).astype(int)  # decoded (floats in [0, 1])
    height, width, _ = pixels.shape
    assert width == 11 * 110 and height >= 4 * 110, (width, height)

    def share(color: str) -> float:
        rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
        return float((np.abs(pixels - rgb).sum(axis=-1) <= 24).mean())

    shares = {name: share(color) for name, color in (("pool", "#9e9e9e"), ("target", "#1f77b4"),
                                                     ("selection", "#d62728"))}
    assert all(v > 0.01 for v in shares.values()), shares  # every series is drawn
    assert (pixels.sum(axis=-1) < 3 * 250).mean() < 0.6, "mostly ink: not a bar chart on a white background"


def quickstart_rows(n: int) -> list[dict]:
    return read_jsonl(REPO / "data" / "quickstart" / "pool.jsonl")[:n]


def _tiny_pool(tmp_path, tokenizer: str | None, token_lengths: list[int] | None) -> tuple[str, dict]:
    """The pool stage on the first 24 quickstart problems (every problem kept, no held-out slice)."""
    from skill_distill.corpus import CorpusFields
    from skill_distill.decontamination import DecontaminationConfig
    from skill_distill.io import write_jsonl
    from skill_distill.pool import PoolSource, TokenCount, run_pool

    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, quickstart_rows(24))
    stats = run_pool(PoolSource(str(corpus), fields=CorpusFields()), str(tmp_path / "pool"),
                     tokens=TokenCount(tokenizer, token_lengths or []),
                     decontamination=DecontaminationConfig(enabled=False))
    return str(tmp_path / "pool" / "pool.jsonl"), stats


def _report(pool: str, out) -> tuple[dict, str]:
    from skill_distill.selection_report import run_selection_report

    summary = run_selection_report(pool, str(REPO / "data" / "quickstart" / "tree.json"),
                                   str(REPO / "data" / "quickstart" / "attribution.jsonl"), None, str(out),
                                   SelectionConfig(strategy="random", budget=10, seed=1))
    return summary, (out / "selection_report.md").read_text()


@pytest.mark.slow
def test_report_shows_the_pool_stages_truncation_counts(tmp_path, qwen_tokenizer_dir):
    from skill_distill.pool import TokenMeter

    rows = quickstart_rows(24)
    meter = TokenMeter(str(qwen_tokenizer_dir))
    lengths = sorted(p + t for p, t, _ in (meter.measure(r["problem"], r["trace"]) for r in rows))
    cut = lengths[len(lengths) // 2]  # half the traces are longer than this
    pool, stats = _tiny_pool(tmp_path, str(qwen_tokenizer_dir), [cut, 8192])
    tokens = stats["tokens"]
    over = sum(1 for n in lengths if n > cut)
    assert tokens["rows"] == 24 and tokens["over"] == {str(cut): over, "8192": 0} and 0 < over < 24
    summary, text = _report(pool, tmp_path / "report")
    assert summary["pool_tokens"] == tokens
    section = text.split("## Trace lengths (pool stage)\n", 1)[1]
    assert f"over its 24 pool traces (tokenizer `{qwen_tokenizer_dir}`" in section
    lost = tokens["answer_lost"][str(cut)]
    assert f"| {cut:,} | {over} | {100 * over / 24:.1f}% | {lost} | {100 * lost / 24:.1f}% |" in section
    assert "| 8,192 | 0 | 0.0% | 0 | 0.0% |" in section

    # the counts are read from the pool stage's file, not counted again: an edited file shows in the report
    stats_path = tmp_path / "pool" / "pool_stats.json"
    edited = read_json(stats_path)
    edited["tokens"]["over"]["8192"] = 3
    write_json(stats_path, edited)
    assert "| 8,192 | 3 | 12.5% | 0 | 0.0% |" in _report(pool, tmp_path / "report2")[1]


def test_report_without_token_counts_has_no_length_section_and_bad_counts_fail_in_one_line(tmp_path):
    pool, stats = _tiny_pool(tmp_path, None, None)  # no tokenizer: the pool stage counts no tokens
    assert "tokens" not in stats
    summary, text = _report(pool, tmp_path / "report")
    assert summary["pool_tokens"] is None and "## Trace lengths" not in text
    stats_path = tmp_path / "pool" / "pool_stats.json"
    write_json(stats_path, dict(read_json(stats_path), tokens={"rows": "24"}))
    with pytest.raises(DataError, match=r"pool_stats.json: 'tokens' is not the pool stage's trace-length counts") as e:
        _report(pool, tmp_path / "report2")
    assert "\n" not in str(e.value)
