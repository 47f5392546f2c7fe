"""The generate-traces stage (issue 24) against a scripted OpenAI-compatible endpoint on 127.0.0.1: exact kept and
dropped counts, the majority rule, skill-targeted allocation (chi-square), resume after kill -9, sharding, and
one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from scripted_endpoint import ScriptedEndpoint
from skill_distill.decontamination import DecontaminationConfig
from skill_distill.generation.base import SamplingConfig
from skill_distill.generation.factory import BackendConfig, HFConfig, OpenAIConfig
from skill_distill.io import ConfigError, DataError
from skill_distill.traces import (
    TEACHER_SAMPLING,
    SkillTargeting,
    allocate_samples,
    majority_answer,
    merge_trace_shards,
    run_generate_traces,
)

REPO = Path(__file__).resolve().parents[1]
OFF = DecontaminationConfig(enabled=False)


def think(reasoning: str, answer: str | None) -> str:
    box = f" The answer is \\boxed{{{answer}}}." if answer is not None else " I am done."
    return f"<think>\n{reasoning}\n</think>\n\n{box.strip()}"


# problem text -> the four choices the endpoint returns for it (n = 4)
CHOICES = {
    "What is 2 + 3?": [think("2 + 3 = 5.", "5"),
                       think("Two plus three: count 3, 4, 5. So it is five, checked twice over.", "5"),
                       think("2 + 3 is 5 because 3 + 2 is 5.", "5"),
                       think("2 + 3 = 6.", "6")],
    "What is 4 * 6?": [(think("4 * 6 = 24 and then some more text", "24"), "length"),  # right, but cut at the cap
                       "4 * 6 = 24, so \\boxed{24}.",  # no </think>
                       think("4 * 6 is twenty-four.", None),  # no answer
                       think("4 * 6 = 20.", "20")],
    "What is 7 + 1?": [think("7 + 1 = 8.", "8"), think("Eight.", "8"), think("7 + 1 = 8 again.", "8"),
                       think("7 + 1 = 9.", "9")],
    "Pick a number from 1 to 3.": [think("one", "1"), think("two", "2"), think("three", "3"),
                                   think("three again", "3")],
    "What is half of one?": [think("a half", "\\frac{1}{2}"), think("0.5", "0.5"), think("1/2", "1/2"),
                             think("one", "1")],
}
PROBLEMS = [  # id, problem, reference answer ("" = none)
    ("a", "What is 2 + 3?", "5"),
    ("b", "What is 4 * 6?", "24"),
    ("c", "What is 7 + 1?", ""),
    ("d", "Pick a number from 1 to 3.", ""),
    ("e", "What is half of one?", ""),
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _script(prompt: str, body: dict):
    for problem, choices in CHOICES.items():
        if f"Question: {problem}" in prompt:
            assert body["n"] == len(choices)
            return choices
    return 404, "unknown prompt"


@pytest.fixture
def problems_file(tmp_path) -> Path:
    return _write_jsonl(tmp_path / "problems.jsonl",
                        [{"id": i, "problem": p, "answer": a, "pass_rate": None} for i, p, a in PROBLEMS])


@pytest.fixture
def endpoint():
    with ScriptedEndpoint(_script, model="scripted-teacher") as ep:
        yield ep


def _backend(endpoint, tokenizer, **kw) -> BackendConfig:
    return OpenAIConfig(model="scripted-teacher", tokenizer=str(tokenizer),
                         base_url=endpoint.base_url, **kw)


@pytest.mark.slow
def test_kept_and_dropped_counts_are_exact(tmp_path, problems_file, endpoint, qwen_tokenizer_dir):
    out = tmp_path / "out"
    result = run_generate_traces(str(problems_file), str(out), _backend(endpoint, qwen_tokenizer_dir),
                                 teacher="scripted-r1", sampling=SamplingConfig(n=4, max_new_tokens=64, seed=1),
                                 keep=2, min_agreement=0.6, decontamination=OFF, grader_workers=0)
    problems = {r["id"]: r for r in _rows(out / "problems.jsonl")}
    assert problems["a"]["dropped"] == {"truncated": 0, "no_think_close": 0, "no_answer": 0, "wrong": 1,
                                        "low_agreement": 0, "surplus": 1}
    assert problems["b"]["dropped"] == {"truncated": 1, "no_think_close": 1, "no_answer": 1, "wrong": 1,
                                        "low_agreement": 0, "surplus": 0}
    # no reference: the majority answer 8 (3 of 4 agree >= 0.6) is the reference
    assert problems["c"]["reference"] == "majority" and problems["c"]["answer"] == "8"
    assert problems["c"]["agreement"] == 0.75 and problems["c"]["kept"] == 2
    # majority 3 with 2 of 4 (< 0.6): nothing kept
    assert problems["d"]["answer"] == "3" and problems["d"]["agreement"] == 0.5
    assert problems["d"]["dropped"]["low_agreement"] == 2 and problems["d"]["dropped"]["wrong"] == 2
    assert problems["d"]["kept"] == 0
    # equivalent forms agree through the grader: \frac{1}{2}, 0.5 and 1/2 are one answer
    assert problems["e"]["agreement"] == 0.75 and problems["e"]["kept"] == 2
    assert result["kept"] == 6 and result["problems_with_traces"] == 3 and result["samples"] == 20
    assert result["dropped"] == {"truncated": 1, "no_think_close": 1, "no_answer": 1, "wrong": 6,
                                 "low_agreement": 2, "surplus": 3}
    assert result["pass_rate_histogram"] == {"0": 1, "(0,0.25]": 0, "(0.25,0.5]": 1, "(0.5,0.75]": 3, "(0.75,1)": 0,
                                             "1": 0}
    traces = _rows(out / "traces.jsonl")
    assert [t["id"] for t in traces] == ["a#0", "a#2", "c#1", "c#0", "e#1", "e#2"]  # the shortest two, by tokens
    first = traces[0]
    assert first["trace"] == CHOICES["What is 2 + 3?"][0] and first["answer"] == "5"
    assert first["teacher"] == "scripted-r1" and first["teacher_pass_rate"] == 0.75 and first["n_sampled"] == 4
    assert first["reference"] == "given" and first["pass_rate"] == 0.75
    assert traces[2]["reference"] == "majority" and traces[2]["answer"] == "8"
    # the teacher saw its own chat template in thinking mode, with the project's instruction
    assert all(p.startswith("<|im_start|>user\nPlease reason step by step") for p in endpoint.prompts())
    assert json.loads((out / "traces_summary.json").read_text())["kept"] == 6


def test_output_feeds_the_pool_reader_and_pool_filters(tmp_path, problems_file, endpoint, qwen_tokenizer_dir):
    from skill_distill.corpus import load_corpus
    from skill_distill.pool import PoolDraw, PoolFilter, PoolSource, run_pool

    out = tmp_path / "out"
    run_generate_traces(str(problems_file), str(out), _backend(endpoint, qwen_tokenizer_dir),
                        sampling=SamplingConfig(n=4, max_new_tokens=64), keep=2, min_agreement=0.6,
                        decontamination=OFF, grader_workers=0)
    examples = load_corpus(out / "traces.jsonl")  # the reader attribute, profile and training use
    assert len(examples) == 6 and all("</think>" in e.trace and e.answer for e in examples)
    stats = run_pool(PoolSource(str(out / "traces.jsonl")), str(tmp_path / "pool"),
                     PoolDraw(max_traces_per_problem=2), filters=PoolFilter(max_trace_chars=60), decontamination=OFF)
    assert stats["dropped"]["trace_chars"] == sum(len(e.trace) > 60 for e in examples) > 0
    assert stats["pool"] == 6 - stats["dropped"]["trace_chars"]


def test_majority_answer_rule():
    assert majority_answer(["3", None, "4", " 3 ", "4", "4"]) == "4"
    assert majority_answer(["2", "1", "1", "2"]) == "2"  # a tie: the first seen
    assert majority_answer([None, None]) is None


@pytest.mark.slow
def test_majority_votes_count_every_answered_sample(tmp_path, endpoint, qwen_tokenizer_dir):
    problems = _write_jsonl(tmp_path / "p.jsonl", [{"id": "x", "problem": "What is 4 * 6?", "answer": None}])
    result = run_generate_traces(str(problems), str(tmp_path / "out"), _backend(endpoint, qwen_tokenizer_dir),
                                 sampling=SamplingConfig(n=4), decontamination=OFF, grader_workers=0)
    # votes: 24 (the truncated trace closed its box), 24 (no </think>), none, 20: majority 24 with 2 of 4; no trace
    # that agrees can be kept (cut at the cap, no </think>)
    row = _rows(tmp_path / "out" / "problems.jsonl")[0]
    assert row["reference"] == "majority" and row["answer"] == "24" and row["agreement"] == 0.5
    assert result["kept"] == 0 and row["dropped"] == {"truncated": 1, "no_think_close": 1, "no_answer": 1,
                                                      "wrong": 1, "low_agreement": 0, "surplus": 0}


# ---- skill-targeted allocation ----------------------------------------------------------------------------------
TREE = {"name": "t", "children": [{"name": "Arithmetic", "children": [{"name": "addition"}, {"name": "division"}]},
                                  {"name": "Algebra", "children": [{"name": "linear equations"}]}]}
LEAVES = [("Arithmetic", "addition"), ("Arithmetic", "division"), ("Algebra", "linear equations")]
ACCURACY = [0.8, 0.2, 0.5]


def _targeting_inputs(d: Path, per_leaf=(60, 30, 90), budget: int = 20000, accuracy=ACCURACY
                      ) -> tuple[list[str], SkillTargeting]:
    ids, attribution = [], []
    for leaf, count in zip(LEAVES, per_leaf, strict=True):
        for i in range(count):
            ids.append(f"{leaf[1]}-{i}")
            attribution.append({"id": ids[-1], "chains": [list(leaf)]})
    (d / "tree.json").write_text(json.dumps(TREE))
    _write_jsonl(d / "attr.jsonl", attribution)
    nodes = [{"chain": "->".join(leaf), "judged": 10, "accuracy": acc, "is_leaf": True}
             for leaf, acc in zip(LEAVES, accuracy, strict=True)]
    (d / "profile.json").write_text(json.dumps({"nodes": nodes}))
    return ids, SkillTargeting(attribution=str(d / "attr.jsonl"), profile=str(d / "profile.json"),
                               tree=str(d / "tree.json"), budget=budget, seed=7)


def test_skill_targeted_allocation_follows_the_weights(tmp_path):
    from scipy.stats import chisquare

    ids, targeting = _targeting_inputs(tmp_path)
    allocation = allocate_samples(ids, targeting)
    assert sum(allocation.samples.values()) == targeting.budget and allocation.notes == []
    # target: w = 1/acc normalised over leaves = (1.25, 5, 2) / 8.25
    w = [1 / a for a in ACCURACY]
    expected_share = [x / sum(w) for x in w]
    for leaf, share in zip(LEAVES, expected_share, strict=True):
        assert allocation.target["->".join(leaf)] == pytest.approx(share)
    per_leaf = [sum(n for i, n in allocation.samples.items() if i.startswith(leaf[1])) for leaf in LEAVES]
    assert chisquare(per_leaf, [targeting.budget * s for s in expected_share]).pvalue > 1e-3
    # within a leaf its problems are drawn uniformly: per problem, the expected count is budget * share / n(leaf)
    counts = [allocation.samples[i] for i in ids]
    sizes = dict(zip([leaf[1] for leaf in LEAVES], (60, 30, 90), strict=True))
    share_of = dict(zip([leaf[1] for leaf in LEAVES], expected_share, strict=True))
    expected = [targeting.budget * share_of[i.rsplit("-", 1)[0]] / sizes[i.rsplit("-", 1)[0]] for i in ids]
    assert chisquare(counts, expected).pvalue > 1e-3
    # the test can fail: the same counts are far from a uniform allocation over problems
    assert chisquare(counts, [targeting.budget / len(ids)] * len(ids)).pvalue < 1e-9
    # the weak leaf's problems get more tries than the strong leaf's
    assert sum(counts[60:90]) / 30 > 3 * sum(counts[:60]) / 60


def test_degenerate_weights_are_noted(tmp_path):
    ids, targeting = _targeting_inputs(tmp_path, budget=100, accuracy=[0.8, 0.0, 0.5])
    notes = allocate_samples(ids, targeting).notes
    assert len(notes) == 1 and "'Arithmetic->division'" in notes[0] and "targeting.w_max" in notes[0]


@pytest.mark.slow
def test_targeted_stage_samples_the_allocation_and_writes_a_manifest(tmp_path, qwen_tokenizer_dir):
    ids, targeting = _targeting_inputs(tmp_path, per_leaf=(4, 4, 4), budget=60)
    targeting.min_samples = 1
    problems = _write_jsonl(tmp_path / "p.jsonl", [{"id": i, "problem": f"Problem {i}", "answer": "1"} for i in ids])

    def script(prompt, body):
        return [think("short", "1")] * body["n"]

    with ScriptedEndpoint(script, model="t") as ep:
        result = run_generate_traces(str(problems), str(tmp_path / "out"), _backend(ep, qwen_tokenizer_dir),
                                     targeting=targeting, decontamination=OFF, grader_workers=0, chunk_size=5)
        asked = {c["prompt"].split("Question: ")[1].split("<|im_end|>")[0]: c["n"] for c in ep.calls}
    manifest = json.loads((tmp_path / "out" / "allocation.json").read_text())
    assert manifest["allocated"] == 60 and manifest["config"]["budget"] == 60
    assert set(manifest["fingerprints"]) == {"problems", "attribution", "profile", "tree"}
    assert {f"Problem {i}": n for i, n in manifest["samples"].items()} == asked
    assert min(asked.values()) >= 1 and result["samples"] == 60
    assert {r["id"]: r["n_sampled"] for r in _rows(tmp_path / "out" / "problems.jsonl")} == manifest["samples"]


# ---- resume, shards, decontamination -------------------------------------------------------------------------------
def _many(tmp_path: Path, count: int) -> Path:
    return _write_jsonl(tmp_path / "many.jsonl", [{"id": f"q{i}", "problem": f"What is {i} + 1?",
                                                   "answer": str(i + 1)} for i in range(count)])


def _adder(prompt: str, body: dict):
    time.sleep(0.05)
    i = int(prompt.split("What is ")[1].split(" ")[0])
    return [think(f"{i} + 1 = {i + 1}.", str(i + 1)), think("hmm.", str(i + 2))]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_kill_9_then_rerun_loses_no_row_and_redoes_no_graded_row(tmp_path, qwen_tokenizer_dir):
    from test_stage_safety import _descendants, _kill_9_and_wait

    problems = _many(tmp_path, 40)
    out = tmp_path / "out"
    with ScriptedEndpoint(_adder, model="t") as ep:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        log = (tmp_path / "stage.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "skill_distill", "generate-traces", f"--problems={problems}",
             f"--output_dir={out}", "--backend=OpenAIConfig", "--backend.model=t", f"--backend.base_url={ep.base_url}",
             f"--backend.tokenizer={qwen_tokenizer_dir}", "--backend.max_concurrency=1", "--sampling.n=2",
             "--chunk_size=4", "--grader_workers=2", "--decontamination.enabled=false"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while "[generate-traces] 8/40 problems" not in (tmp_path / "stage.log").read_text():
                assert proc.poll() is None, (tmp_path / "stage.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no chunk finished in time"
                time.sleep(0.1)
            children = _descendants(proc.pid)
            assert len(children) >= 2  # the grading workers
            _kill_9_and_wait(proc, children, "generate-traces")
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
        done_first = [r["id"] for r in _rows(out / "problems.jsonl")]
        assert 8 <= len(done_first) < 40
        calls_before = len(ep.calls)
        result = run_generate_traces(str(problems), str(out), OpenAIConfig(
            model="t", base_url=ep.base_url, tokenizer=str(qwen_tokenizer_dir), max_concurrency=1),
            sampling=replace(TEACHER_SAMPLING, n=2), chunk_size=4, grader_workers=0, decontamination=OFF)
        asked_again = [c["prompt"].split("What is ")[1].split(" ")[0] for c in ep.calls[calls_before:]]
    assert not {f"q{i}" for i in asked_again} & set(done_first)  # no graded problem is sampled again
    rows = _rows(out / "problems.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(f"q{i}" for i in range(40))  # each problem exactly once
    traces = _rows(out / "traces.jsonl")
    assert sorted(t["id"] for t in traces) == sorted(f"q{i}" for i in range(40))
    assert result["kept"] == 40 and result["dropped"]["wrong"] == 40


@pytest.mark.slow
def test_resume_drops_traces_of_an_unfinished_problem_and_a_torn_line(tmp_path, qwen_tokenizer_dir):
    problems = _many(tmp_path, 6)
    out = tmp_path / "out"
    with ScriptedEndpoint(_adder, model="t") as ep:
        backend = _backend(ep, qwen_tokenizer_dir)
        run = lambda: run_generate_traces(str(problems), str(out), backend, sampling=SamplingConfig(n=2),  # noqa: E731
                                          chunk_size=2, grader_workers=0, decontamination=OFF)
        run()
        full = (out / "traces.jsonl").read_text()
        # as if killed after q5's trace was written but before its problem row, and mid-way through q4's row
        lines = (out / "problems.jsonl").read_text().splitlines(keepends=True)
        (out / "problems.jsonl").write_text("".join(lines[:4]) + lines[4][:10])
        n_before = len(ep.calls)
        result = run()
        assert len(ep.calls) - n_before == 2  # q4 and q5 only
    assert (out / "traces.jsonl").read_text() == full
    assert [r["id"] for r in _rows(out / "problems.jsonl")] == [f"q{i}" for i in range(6)]
    assert result["problems_done_this_run"] == 2 and result["kept"] == 6


@pytest.mark.slow
def test_shards_then_merge_equal_one_run(tmp_path, qwen_tokenizer_dir):
    problems = _many(tmp_path, 7)
    with ScriptedEndpoint(_adder, model="t") as ep:
        backend = _backend(ep, qwen_tokenizer_dir)
        kw = dict(sampling=SamplingConfig(n=2), chunk_size=3, grader_workers=0, decontamination=OFF)
        one = run_generate_traces(str(problems), str(tmp_path / "one"), backend, **kw)
        run_generate_traces(str(problems), str(tmp_path / "sh"), backend, shard_index=0, num_shards=2, **kw)
        with pytest.raises(DataError, match="shard 1 of 2 has not run"):
            merge_trace_shards(str(tmp_path / "sh"), 2)
        run_generate_traces(str(problems), str(tmp_path / "sh"), backend, shard_index=1, num_shards=2, **kw)
    merged = merge_trace_shards(str(tmp_path / "sh"), 2)
    assert merged["kept"] == one["kept"] == 7 and merged["dropped"] == one["dropped"]
    key = lambda r: r["id"]  # noqa: E731
    assert sorted(_rows(tmp_path / "sh" / "traces.jsonl"), key=key) == sorted(_rows(tmp_path / "one" / "traces.jsonl"),
                                                                               key=key)


def test_a_rerun_with_other_settings_is_refused(tmp_path, problems_file, endpoint, qwen_tokenizer_dir):
    out = tmp_path / "out"
    kw = dict(decontamination=OFF, grader_workers=0)
    run_generate_traces(str(problems_file), str(out), _backend(endpoint, qwen_tokenizer_dir),
                        sampling=SamplingConfig(n=4), **kw)
    with pytest.raises(DataError, match="different sampling"):
        run_generate_traces(str(problems_file), str(out), _backend(endpoint, qwen_tokenizer_dir),
                            sampling=SamplingConfig(n=4, temperature=1.0), **kw)


def test_problems_are_decontaminated_first(tmp_path, endpoint, qwen_tokenizer_dir, shared_dir):
    from skill_distill.eval_sets import load_benchmark, resolve_specs

    bench = load_benchmark(resolve_specs(["aime24"])[0]).problems[0]
    problems = _write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "problem": "What is 2 + 3?", "answer": "5"},
                                                   {"id": "leak", "problem": bench.problem, "answer": "1"}])
    result = run_generate_traces(str(problems), str(tmp_path / "out"), _backend(endpoint, qwen_tokenizer_dir),
                                 sampling=SamplingConfig(n=4),
                                 decontamination=DecontaminationConfig(benchmarks=["aime24"]), grader_workers=0)
    assert result["decontamination_removed"] == 1 and result["problems"] == 1
    assert all("What is 2 + 3?" in p for p in endpoint.prompts())
    hits = _rows(tmp_path / "out" / "decontamination_hits.jsonl")
    assert [h["id"] for h in hits] == ["leak"]


# ---- bad input: one line, exit 2 ---------------------------------------------------------------------------------
def _cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "skill_distill", "generate-traces", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


def test_problem_without_text_is_one_line(tmp_path, qwen_tokenizer_dir):
    problems = _write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "problem": "What is 1 + 1?"},
                                                   {"id": "b", "problem": "   "}])
    with pytest.raises(DataError, match=r"p\.jsonl: row 2 \(id 'b'\) has no problem text"):
        run_generate_traces(str(problems), str(tmp_path / "out"), HFConfig(model="x"),
                            decontamination=OFF)


@pytest.mark.slow
def test_bad_input_from_the_command_line(tmp_path, qwen_tokenizer_dir):
    problems = _write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "problem": "What is 2 + 3?", "answer": "5"},
                                                   {"id": "b", "answer": "1"}])
    line = _one_error_line(_cli([f"--problems={problems}", "--output_dir=out", "--backend.model=x",
                                 "--decontamination.enabled=false"], tmp_path))
    assert "row 2: missing field 'problem'" in line

    problems = _write_jsonl(tmp_path / "ok.jsonl", [{"id": "a", "problem": "What is 2 + 3?", "answer": "5"}])
    line = _one_error_line(_cli([f"--problems={problems}", "--output_dir=out2", "--backend=VLLMConfig",
                                 "--backend.model=./no/such/teacher", "--decontamination.enabled=false"], tmp_path))
    assert "unknown teacher" in line and "./no/such/teacher" in line

    # a served teacher the endpoint does not know: HTTP 404 fails at once
    with ScriptedEndpoint(lambda p, b: (404, "The model `r2` does not exist."), model="r1") as ep:
        line = _one_error_line(_cli([f"--problems={problems}", "--output_dir=out3", "--backend=OpenAIConfig",
                                     "--backend.model=r2", f"--backend.base_url={ep.base_url}",
                                     f"--backend.tokenizer={qwen_tokenizer_dir}", "--grader_workers=0",
                                     "--decontamination.enabled=false"], tmp_path))
    assert "teacher 'r2' (openai) failed" in line and "404" in line and "does not exist" in line

    # an endpoint that errors on every request: bounded retries, then one line
    with ScriptedEndpoint(lambda p, b: (503, "overloaded"), model="r1") as ep:
        line = _one_error_line(_cli([f"--problems={problems}", "--output_dir=out4", "--backend=OpenAIConfig",
                                     "--backend.model=r1", f"--backend.base_url={ep.base_url}",
                                     f"--backend.tokenizer={qwen_tokenizer_dir}", "--backend.max_retries=2",
                                     "--grader_workers=0", "--decontamination.enabled=false"], tmp_path))
        assert len(ep.calls) == 3
    assert "after 3 attempts" in line and "HTTP 503" in line


def test_bad_settings_are_config_errors(tmp_path, problems_file):
    backend = OpenAIConfig(model="t", base_url="http://127.0.0.1:9", tokenizer="x")
    for kw, match in ((dict(keep=0), "keep must be >= 1"), (dict(min_agreement=1.5), "min_agreement"),
                      (dict(shard_index=2, num_shards=2), "shard_index")):
        with pytest.raises(ConfigError, match=match):
            run_generate_traces(str(problems_file), str(tmp_path / "o"), backend, decontamination=OFF, **kw)
    with pytest.raises(ConfigError, match="backend.tokenizer"):
        run_generate_traces(str(problems_file), str(tmp_path / "o"), OpenAIConfig(model="t", base_url="http://127.0.0.1:9"))
    with pytest.raises(ConfigError, match="targeting.budget"):
        SkillTargeting(attribution="a", profile="p", tree="t", budget=0)
