"""The pool stage at OpenMathReasoning's shape: a synthetic Parquet with OMR's columns (two generators, repeated
problems, missing answers, traces without ``</think>``, ``pass_rate_72b_tir`` of "n/a"), read in batches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skill_distill import pool as pool_mod
from skill_distill.corpus import CorpusFields
from skill_distill.decontamination import DecontaminationConfig, normalise
from skill_distill.io import DataError, read_json, read_jsonl
from skill_distill.pool import PoolDraw, PoolFilter, PoolSource, TokenCount, TokenMeter, run_pool

OMR_FIELDS = CorpusFields(id=None, problem="problem", trace="generated_solution", answer="expected_answer",
                          pass_rate="pass_rate_72b_tir", generation_model="generation_model",
                          problem_type="problem_type")
R1_ONLY = PoolFilter(generation_model=["DeepSeek-R1"], problem_type=["has_answer_extracted"])
NO_DECONTAMINATION = DecontaminationConfig(enabled=False)


def omr(corpus, **read) -> PoolSource:
    """An OMR-shaped source with the field mapping of configs/pipeline/pool_omr.yaml."""
    return PoolSource(corpus=str(corpus), fields=OMR_FIELDS, **read)


def omr_rows(problems: int = 40) -> list[dict]:
    """Rows in OMR's schema: 1-5 traces per problem from two generators; some problems repeat with other spacing and
    case (the same problem after normalisation); some rows lack an answer, a ``</think>``, or have type proof."""
    rows = []
    for k in range(problems):
        text = f"Let x = {k}. Compute the value of 3x + {k % 7} and give the result as an integer."
        for t in range(1 + (k * 7) % 5):
            shown = text if t % 2 == 0 else "  " + text.upper().replace(" ", "   ")
            answer = str(3 * k + k % 7)
            think = "</think>" if (k + 2 * t) % 5 else ""
            rows.append({
                "expected_answer": None if (k * 3 + t) % 9 == 0 else answer,
                "problem_type": "converted_proof" if k % 11 == 5 else "has_answer_extracted",
                "problem_source": "synthetic",
                "generation_model": "DeepSeek-R1" if (k + t) % 3 else "QwQ-32B",
                "pass_rate_72b_tir": "n/a" if t % 2 else str(round((k % 8) / 8, 3)),
                "problem": shown,
                "generated_solution": f"<think>\nTrace {t} of problem {k}: 3*{k} + {k % 7}.\n{think}\n\n"
                                      f"So the value is \\boxed{{{answer}}}.",
                "inference_mode": "cot",
                "used_in_kaggle": bool(k % 2),
            })
    return rows


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def sha_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")


def passes(r: dict) -> bool:
    """The filters of ``R1_ONLY`` and the defaults, straight from the spec."""
    return (r["generation_model"] == "DeepSeek-R1" and r["problem_type"] == "has_answer_extracted"
            and bool(r["expected_answer"]) and "</think>" in r["generated_solution"])


def expected_selection(rows: list[dict], seed: int, size: int, heldout: int) -> tuple[set[int], set[int]]:
    """Reference draw straight from the spec: filter every row, group by normalised problem, take the lowest
    sha256(seed, problem) problems and per problem the row with the lowest sha256(seed, row text)."""
    by_problem: dict[int, list[tuple[int, int]]] = {}
    for i, r in enumerate(rows):
        if not passes(r):
            continue
        p = sha_int(f"{seed}\0{normalise(r['problem'])}")
        by_problem.setdefault(p, []).append((sha_int(f"{seed}\0{r['problem']}\0{r['generated_solution']}"), i))
    ranked = sorted(by_problem)
    best = {p: min(by_problem[p])[1] for p in ranked}
    return {best[p] for p in ranked[heldout: heldout + size]}, {best[p] for p in ranked[:heldout]}


def test_pool_filters_dedups_and_draws_problems(tmp_path):
    rows = omr_rows()
    src = write_parquet(tmp_path / "omr" / "cot.parquet", rows)
    stats = run_pool(omr(src, batch_size=7), str(tmp_path / "out"), PoolDraw(size=10, heldout=4, seed=42),
                     R1_ONLY, decontamination=NO_DECONTAMINATION)
    pool = read_jsonl(tmp_path / "out" / "pool.jsonl")
    held = read_jsonl(tmp_path / "out" / "heldout.jsonl")
    want_pool, want_held = expected_selection(rows, 42, 10, 4)
    assert {int(r["id"]) for r in pool} == want_pool and {int(r["id"]) for r in held} == want_held
    for r in pool + held:  # the canonical row is the source row
        src_row = rows[int(r["id"])]
        assert src_row["generation_model"] == "DeepSeek-R1" and r["trace"] == src_row["generated_solution"]
        assert r["answer"] == src_row["expected_answer"]
        # the stored text is the problem's plain rendering whenever a passing row has it, also when the kept
        # trace comes with the shouted, spaced-out one (issue 26 part 3)
        texts = {row["problem"] for row in rows if passes(row) and normalise(row["problem"]) == normalise(r["problem"])}
        plain = [t for t in texts if not t.startswith("  ")]
        assert r["problem"] == (plain[0] if plain else src_row["problem"])
        expected = None if src_row["pass_rate_72b_tir"] == "n/a" else float(src_row["pass_rate_72b_tir"])
        assert r["pass_rate"] == expected
    assert any(rows[int(r["id"])]["problem"] != r["problem"] for r in pool + held)  # the case is exercised
    pool_problems, held_problems = ({normalise(r["problem"]) for r in rs} for rs in (pool, held))
    assert len(pool_problems) == len(pool) == 10 and len(held_problems) == len(held) == 4  # one trace per problem
    assert not pool_problems & held_problems  # held-out is disjoint by problem
    # every drop counted under its filter, in filter order
    d = stats["dropped"]
    assert stats["rows_read"] == len(rows)
    assert d["generation_model"] == sum(r["generation_model"] != "DeepSeek-R1" for r in rows)
    r1 = [r for r in rows if r["generation_model"] == "DeepSeek-R1"]
    assert d["problem_type"] == sum(r["problem_type"] != "has_answer_extracted" for r in r1)
    typed = [r for r in r1 if r["problem_type"] == "has_answer_extracted"]
    assert d["no_answer"] == sum(not r["expected_answer"] for r in typed) > 0
    answered = [r for r in typed if r["expected_answer"]]
    assert d["no_think_close"] == sum("</think>" not in r["generated_solution"] for r in answered) > 0
    passed = [r for r in answered if "</think>" in r["generated_solution"]]
    assert stats["passed_filters"] == len(passed)
    assert stats["problems"] == len({normalise(r["problem"]) for r in passed})
    assert stats["duplicates_merged"] == len(passed) - stats["problems"] > 0
    assert stats["kept"] == {"pool": 10, "heldout": 4}
    assert read_json(tmp_path / "out" / "pool_stats.json") == json.loads(json.dumps(stats))


def test_pool_keeps_several_traces_per_problem_with_unique_ids(tmp_path):
    rows = omr_rows()
    src = write_parquet(tmp_path / "cot.parquet", rows)
    run_pool(omr(src), str(tmp_path / "out"), PoolDraw(size=8, heldout=2, max_traces_per_problem=3), R1_ONLY,
             decontamination=NO_DECONTAMINATION)
    pool = read_jsonl(tmp_path / "out" / "pool.jsonl")
    held = read_jsonl(tmp_path / "out" / "heldout.jsonl")
    per_problem: dict[str, int] = {}
    for r in pool:
        per_problem[normalise(r["problem"])] = per_problem.get(normalise(r["problem"]), 0) + 1
    assert len(per_problem) == 8 and max(per_problem.values()) > 1 and max(per_problem.values()) <= 3
    assert len({r["id"] for r in pool + held}) == len(pool) + len(held)
    assert not set(per_problem) & {normalise(r["problem"]) for r in held}


def test_pool_output_does_not_depend_on_batch_size_or_file_split(tmp_path):
    rows = omr_rows()
    one = write_parquet(tmp_path / "one" / "cot.parquet", rows)
    write_parquet(tmp_path / "parts" / "part-0.parquet", rows[:57])
    write_parquet(tmp_path / "parts" / "part-1.parquet", rows[57:])
    outs = []
    for name, source, batch in [("b7", one, 7), ("b1000", one, 1000), ("dir", tmp_path / "parts", 5),
                                ("glob", tmp_path / "parts" / "part-*.parquet", 13)]:
        run_pool(omr(source, batch_size=batch), str(tmp_path / name), PoolDraw(size=12, heldout=3), R1_ONLY,
                 decontamination=NO_DECONTAMINATION)
        outs.append({f: (tmp_path / name / f).read_bytes() for f in ("pool.jsonl", "heldout.jsonl")})
        stats = read_json(tmp_path / name / "pool_stats.json")
        stats.pop("corpus")
        outs[-1]["stats"] = stats
    assert all(o == outs[0] for o in outs[1:])
    assert outs[0]["pool.jsonl"].count(b"\n") == 12


PEAK_RSS_SCRIPT = """
import json, resource, sys
from skill_distill.corpus import CorpusFields
from skill_distill.decontamination import DecontaminationConfig
from skill_distill.pool import PoolDraw, PoolSource, run_pool
fields = CorpusFields(id=None, problem="problem", trace="generated_solution", answer="expected_answer")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stats = run_pool(PoolSource(sys.argv[1], fields=fields, batch_size=100), sys.argv[2], PoolDraw(size=10, heldout=2),
                 decontamination=DecontaminationConfig(enabled=False))
print(json.dumps({"before_kb": before, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "rows_read": stats["rows_read"]}))
"""


def padded_parquet(path: Path, rows: int, trace_chars: int = 8000, row_group_rows: int = 10_000) -> Path:
    """OMR-shaped rows with traces padded to a real length (random hex: Parquet cannot compress it away), written
    in row groups of ``row_group_rows`` (10,000 rows: 80 MB, far larger than a batch)."""
    import os

    writer = None
    for start in range(0, rows, 1000):
        part = pa.Table.from_pylist([{"problem": f"Problem {i}: compute {i} + {i % 7}.",
                                      "generated_solution": f"<think>{os.urandom(trace_chars // 2).hex()}</think> "
                                                            f"\\boxed{{{i + i % 7}}}",
                                      "expected_answer": str(i + i % 7)}
                                     for i in range(start, min(rows, start + 1000))])
        if writer is None:
            writer = pq.ParquetWriter(path, part.schema)
        writer.write_table(part, row_group_size=row_group_rows)
        del part
    writer.close()
    return path


def pool_peak_rss(source: Path, out: Path) -> tuple[int, int]:
    """(peak RSS, RSS after imports) in bytes of the pool stage run in a fresh process, so the test process's own
    memory does not count."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, str(source), str(out)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "SKILL_DISTILL_DATA": ""}, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["peak_kb"] * 1024, report["before_kb"] * 1024


@pytest.mark.slow
def test_pool_peak_memory_is_flat_in_file_size(tmp_path):
    """Issue 26 part 1. The pool stage (tokenizer off) reads a 200 MB Parquet (20,000 rows of 8,000-character traces
    in 80 MB row groups; batches of 100 rows, 0.8 MB) and the same kind of file of 2,000 rows. Bound: the peak RSS
    of the large run exceeds the small run's by less than an eighth of the extra file bytes (pyarrow's default
    read-ahead keeps the column chunks it read: about one byte of RAM per byte of file)."""
    small = padded_parquet(tmp_path / "small.parquet", 2_000)
    large = padded_parquet(tmp_path / "large.parquet", 25_000)
    extra = large.stat().st_size - small.stat().st_size
    assert extra > 150e6 and large.stat().st_size > 200 * 100 * 8000  # the file: over 200 batches
    peak_small, _ = pool_peak_rss(small, tmp_path / "out_small")
    peak_large, imported = pool_peak_rss(large, tmp_path / "out_large")
    growth = peak_large - peak_small
    assert growth < extra / 8, (f"peak RSS {peak_large / 1e6:.0f} MB on {large.stat().st_size / 1e6:.0f} MB against "
                                f"{peak_small / 1e6:.0f} MB on {small.stat().st_size / 1e6:.0f} MB "
                                f"(after imports: {imported / 1e6:.0f} MB)")
    assert len(read_jsonl(tmp_path / "out_large" / "pool.jsonl")) == 10


def test_pool_limit_stops_reading(tmp_path, monkeypatch):
    rows = omr_rows(60)
    src = write_parquet(tmp_path / "cot.parquet", rows)
    real = pool_mod.iter_row_batches
    handed_out = [0]

    def counting(*args, **kwargs):
        for batch in real(*args, **kwargs):
            handed_out[0] += len(batch)
            yield batch

    monkeypatch.setattr(pool_mod, "iter_row_batches", counting)
    stats = run_pool(omr(src, batch_size=10, limit=50), str(tmp_path / "limited"), PoolDraw(size=3), R1_ONLY,
                     decontamination=NO_DECONTAMINATION)
    assert stats["rows_read"] == 50
    assert handed_out[0] <= 2 * 50  # pass 1 stops at the limit, pass 2 at the last chosen row
    assert max(int(r["id"]) for r in read_jsonl(tmp_path / "limited" / "pool.jsonl")) < 50


def test_pool_token_stats_count_traces_that_lose_their_answer(tmp_path, qwen_tokenizer_dir):
    rows = [r for r in omr_rows(6) if r["expected_answer"] and "</think>" in r["generated_solution"]
            and r["generation_model"] == "DeepSeek-R1" and r["problem_type"] == "has_answer_extracted"]
    src = write_parquet(tmp_path / "cot.parquet", rows)
    meter = TokenMeter(str(qwen_tokenizer_dir))
    run_pool(omr(src), str(tmp_path / "probe"), PoolDraw(size=1), R1_ONLY, decontamination=NO_DECONTAMINATION)
    first = read_jsonl(tmp_path / "probe" / "pool.jsonl")[0]
    prompt, trace_len, boxed = meter.measure(first["problem"], first["trace"])
    enc = meter.tok(first["trace"], add_special_tokens=False, return_offsets_mapping=True)
    at = first["trace"].rfind("\\boxed{")
    start, end = enc["offset_mapping"][boxed]
    assert start <= at < end  # the counted position is the token holding the box's first character
    cut = prompt + boxed  # a length that cuts exactly at the box's first token: the answer is lost
    stats = run_pool(omr(src), str(tmp_path / "out"), PoolDraw(size=1), R1_ONLY,
                     TokenCount(str(qwen_tokenizer_dir), [cut, cut + 1, prompt + trace_len]),
                     decontamination=NO_DECONTAMINATION)
    tokens = stats["tokens"]
    assert tokens["rows"] == 1 and tokens["no_boxed"] == 0
    assert tokens["answer_lost"] == {str(cut): 1, str(cut + 1): 0, str(prompt + trace_len): 0}
    assert tokens["over"] == {str(cut): 1, str(cut + 1): 1, str(prompt + trace_len): 0}


def test_pool_token_cap_drops_long_rows(tmp_path, qwen_tokenizer_dir):
    rows = omr_rows(12)
    for k, r in enumerate(rows):  # every third row gets a long think section
        if k % 3 == 0:
            r["generated_solution"] = r["generated_solution"].replace("<think>\n", "<think>\n" + "step " * 300)
    src = write_parquet(tmp_path / "cot.parquet", rows)
    meter = TokenMeter(str(qwen_tokenizer_dir))
    cap = 200
    stats = run_pool(omr(src), str(tmp_path / "out"), PoolDraw(), PoolFilter(
        generation_model=["DeepSeek-R1"], problem_type=["has_answer_extracted"], max_tokens=cap),
        TokenCount(str(qwen_tokenizer_dir)), decontamination=NO_DECONTAMINATION)
    pool = read_jsonl(tmp_path / "out" / "pool.jsonl")
    assert stats["dropped"]["tokens"] > 0 and pool
    for r in pool:
        p, t, _ = meter.measure(r["problem"], r["trace"])
        assert p + t <= cap


def test_pool_bad_input_is_one_clear_line(tmp_path):
    rows = omr_rows(5)
    src = write_parquet(tmp_path / "cot.parquet", rows)
    with pytest.raises(DataError, match=r"row 1: missing field 'solution' \(trace\)"):
        run_pool(PoolSource(str(src), fields=CorpusFields(id=None, trace="solution", answer="expected_answer")),
                 str(tmp_path / "o"), decontamination=NO_DECONTAMINATION)
    with pytest.raises(DataError, match=r"needs 60 problems, but only \d+ distinct problems pass"):
        run_pool(omr(src), str(tmp_path / "o"), PoolDraw(size=50, heldout=10), R1_ONLY,
                 decontamination=NO_DECONTAMINATION)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad.parquet: not a readable Parquet file"):
        run_pool(omr(bad), str(tmp_path / "o"), decontamination=NO_DECONTAMINATION)
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.jsonl"))


def test_one_reader_for_jsonl_json_and_parquet(tmp_path):
    from skill_distill.io import iter_jsonl
    from skill_distill.rows import iter_row_batches

    rows = [{"problem": f"p{i}", "trace": "<think>t</think>", "answer": str(i), "extra": i} for i in range(23)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.json").write_text(json.dumps(rows))
    write_parquet(tmp_path / "c.parquet", rows, row_group_size=4)
    for name in ("c.jsonl", "c.json", "c.parquet"):
        batches = list(iter_row_batches(tmp_path / name, batch_size=5))
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3], name
        assert [r for b in batches for r in b] == rows, name
    projected = [r for b in iter_row_batches(tmp_path / "c.parquet", 5, columns=["problem", "missing"]) for r in b]
    assert projected == [{"problem": r["problem"]} for r in rows]  # a missing column is left for the field check
    torn = tmp_path / "torn.jsonl"
    torn.write_text(json.dumps(rows[0]) + "\n" + '{"problem": "cut')
    assert list(iter_jsonl(torn, allow_torn_tail=True)) == [rows[0]]
    with pytest.raises(DataError, match=r"torn.jsonl:2: malformed JSON"):
        list(iter_jsonl(torn))
    torn.write_text('{"problem": "cut\n' + json.dumps(rows[0]) + "\n")  # malformed in the middle: never a torn tail
    with pytest.raises(DataError, match=r"torn.jsonl:1: malformed JSON"):
        list(iter_jsonl(torn, allow_torn_tail=True))
    with pytest.raises(DataError, match=r"corpus file not found: .*nope.jsonl"):
        list(iter_row_batches(tmp_path / "nope.jsonl"))


@pytest.mark.slow
def test_shipped_omr_config_counts_tokens_offline_and_a_hub_tokenizer_fails_in_one_line(tmp_path, monkeypatch, capsys):
    """configs/pipeline/pool_omr.yaml counts tokens with the shipped Qwen3 tokenizer (no hub needed); naming a hub
    tokenizer without a hub ends in one line naming the setting and the fixes, exit 2 (issue 26 part 2)."""
    import huggingface_hub.constants

    from skill_distill.__main__ import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    src = write_parquet(tmp_path / "cot.parquet", omr_rows())
    config = Path(__file__).resolve().parents[1] / "configs" / "pipeline" / "pool_omr.yaml"
    args = ["pool", "--config", str(config), "--source.corpus", str(src), "--draw.size", "5", "--draw.heldout", "1",
            "--decontamination.enabled", "false"]
    main([*args, "--output_dir", str(tmp_path / "out")])
    stats = read_json(tmp_path / "out" / "pool_stats.json")
    assert stats["tokens"]["tokenizer"] == "asset:qwen3-tokenizer" and stats["tokens"]["rows"] == 5
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([*args, "--output_dir", str(tmp_path / "hub"), "--tokens.tokenizer", "Qwen/Qwen3-4B"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: tokenizer: cannot load 'Qwen/Qwen3-4B'")
    assert "asset:qwen3-tokenizer" in err and not (tmp_path / "hub" / "pool.jsonl").exists()


def test_grouped_settings_are_checked_when_parsed(tmp_path, capsys):
    """Issue 22 part 3: run_pool takes grouped, typed settings, each validated when it is built (also by the CLI,
    before anything is read)."""
    from skill_distill.__main__ import main
    from skill_distill.io import ConfigError

    for build, key in [(lambda: PoolDraw(size=0), "draw.size"), (lambda: PoolDraw(heldout=-1), "draw.heldout"),
                       (lambda: PoolDraw(max_traces_per_problem=0), "draw.max_traces_per_problem"),
                       (lambda: PoolSource(" "), "source.corpus"), (lambda: PoolSource("c", batch_size=0),
                                                                    "source.batch_size"),
                       (lambda: PoolSource("c", limit=0), "source.limit"),
                       (lambda: TokenCount(None, [8192]), "tokens.lengths"),
                       (lambda: TokenCount("asset:qwen3-tokenizer", [0]), "tokens.lengths"),
                       (lambda: PoolFilter(max_tokens=0), "filters.max_tokens")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            build()
    with pytest.raises(ConfigError, match="set tokens.tokenizer"):
        run_pool(omr(tmp_path / "never_read.parquet"), str(tmp_path / "o"), filters=PoolFilter(max_tokens=10),
                 decontamination=NO_DECONTAMINATION)
    config = Path(__file__).resolve().parents[1] / "configs" / "pipeline" / "pool_r1_sample.yaml"
    with pytest.raises(SystemExit) as e:
        main(["pool", "--config", str(config), "--draw.heldout", "-2", "--output_dir", str(tmp_path / "o")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: draw.heldout must be >= 0, got -2"
    assert not (tmp_path / "o").exists()
