"""Per-skill aggregation (exact numbers), attribution loading, and the student-profile stage end to end with the
vLLM backend on SmolLM2-135M (real weights): files, counts, resume, shards + merge, and the shipped configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from skill_distill.generation.base import GenerationBackend, SamplingConfig
from skill_distill.generation.factory import BackendConfig
from skill_distill.grading import GradingConfig
from skill_distill.io import DataError
from skill_distill.profile import load_profile, merge_profile_shards, reference_answers, run_profile
from skill_distill.skill_stats import SkillCounts, bootstrap_interval, load_attribution, nodes_of, wilson_interval
from skill_distill.skill_tree import SkillTree

REPO = Path(__file__).resolve().parents[1]

TREE = {"name": "Math", "children": [
    {"name": "Arithmetic", "children": [{"name": "addition"}, {"name": "multiplication"}]},
    {"name": "Algebra", "children": [{"name": "linear equations"}, {"name": "quadratics"}]},
]}
ADD, MUL = ("Arithmetic", "addition"), ("Arithmetic", "multiplication")
LIN, QUAD = ("Algebra", "linear equations"), ("Algebra", "quadratics")


@pytest.fixture(scope="module")
def tree() -> SkillTree:
    return SkillTree.from_dict(TREE, "test-tree")


# ---- aggregation ------------------------------------------------------------------------------------------
def test_counts_exact_numbers_one_sample(tree):
    chains = {"a": [ADD], "b": [ADD, MUL], "c": [MUL, LIN], "d": [QUAD], "e": []}
    correct = {"a": [True], "b": [False], "c": [True], "d": [True], "e": [False], "f": [True]}
    counts = SkillCounts.from_results(chains, correct)
    expected = {  # node: (correct, judged), worked out by hand
        (): (4, 6),  # every graded problem, with or without chains ("f" has no attribution row)
        ("Arithmetic",): (2, 3),  # a, b (once, though it has two Arithmetic leaves), c
        ADD: (1, 2), MUL: (1, 2),
        ("Algebra",): (2, 2), LIN: (1, 1), QUAD: (1, 1),
    }
    assert {n: (counts.correct(n), counts.judged(n)) for n in counts.nodes()} == expected
    assert counts.nodes()[0] == ()
    assert counts.accuracy(("Arithmetic",)) == pytest.approx(2 / 3)
    rows = {r["chain"]: r for r in counts.rows(tree)}
    assert rows[""]["is_leaf"] is False and rows["Arithmetic->addition"]["is_leaf"] is True
    assert rows["Arithmetic->addition"]["depth"] == 2 and rows["Arithmetic->addition"]["correct"] == 1
    assert sum(r["judged"] for r in rows.values() if r["is_leaf"]) >= counts.judged(()) - 2  # 4 with chains


def test_counts_with_several_samples_use_problem_means():
    counts = SkillCounts.from_results({"a": [ADD], "b": [ADD], "c": [MUL]},
                                      {"a": [1, 1, 0, 0], "b": [1, 1, 1, 1], "c": [0, 0, 0, 1]})
    assert counts.judged(ADD) == 2 and counts.samples(ADD) == 8
    assert counts.correct(ADD) == pytest.approx(1.5)
    assert counts.accuracy(("Arithmetic",)) == pytest.approx((0.5 + 1 + 0.25) / 3)
    assert sorted(counts.problem_values(ADD).values()) == [0.5, 1.0]
    with pytest.raises(ValueError, match="added twice"):
        counts.add("a", [ADD], [True])


def test_nodes_of_counts_shared_prefixes_once():
    assert nodes_of([ADD, MUL]) == {(), ("Arithmetic",), ADD, MUL}


def test_wilson_matches_scipy_and_known_values():
    from scipy.stats import binomtest

    for k, n in [(0, 1), (0, 10), (3, 10), (7, 9), (50, 50), (123, 400)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    # textbook value: 3 of 10 -> (0.1078, 0.6032)
    assert wilson_interval(3, 10) == pytest.approx((0.10779, 0.60322), abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_interval_choice_and_bootstrap_determinism():
    one = SkillCounts.from_results({}, {str(i): [i % 3 == 0] for i in range(30)})
    assert one.interval(()) == wilson_interval(10, 30)
    values = [0.0, 0.25, 0.5, 1.0, 1.0, 0.75, 0.0, 0.5] * 5
    many = SkillCounts.from_results({}, {str(i): [v] * 4 if v in (0.0, 1.0) else [1, 0] * 2 if v == 0.5 else
                                         ([1, 0, 0, 0] if v == 0.25 else [1, 1, 1, 0]) for i, v in enumerate(values)})
    lo, hi = many.interval((), seed=7)
    assert (lo, hi) == many.interval((), seed=7) == bootstrap_interval(values, seed=7)
    assert (lo, hi) != bootstrap_interval(values, seed=8)
    assert lo < sum(values) / len(values) < hi
    # the blockwise resampling gives the same numbers whatever the block size (root nodes of 100K problems)
    assert bootstrap_interval([0.0, 1.0] * 3000, seed=1, resamples=2000) == bootstrap_interval(
        [0.0, 1.0] * 3000, seed=1, resamples=2000)


def former_bootstrap(values, confidence=0.95, resamples=1000, seed=0):
    """The hand-written percentile bootstrap the project used before scipy.stats.bootstrap (the reference)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    block = max(1, min(resamples, 4_000_000 // len(v)))
    for start in range(0, resamples, block):
        k = min(block, resamples - start)
        means[start: start + k] = v[rng.integers(0, len(v), size=(k, len(v)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return tuple(float(x) for x in np.quantile(means, [alpha, 1 - alpha]))


@pytest.mark.parametrize("values,seed,resamples", [([0.0, 0.25, 0.5, 1.0, 1.0, 0.75, 0.0, 0.5] * 5, 7, 1000),
                                                   ([0.0, 1.0, 1.0] * 40, 0, 2000), ([0.0, 1.0] * 3000, 1, 700)])
def test_scipy_bootstrap_keeps_the_former_intervals(values, seed, resamples):
    assert bootstrap_interval(values, seed=seed, resamples=resamples) == pytest.approx(
        former_bootstrap(values, seed=seed, resamples=resamples), abs=1e-3)
    assert bootstrap_interval([0.5] * 4) == (0.5, 0.5) and bootstrap_interval([1.0]) == (1.0, 1.0)


def test_shrinkage_zero_is_raw_and_positive_is_hand_computed():
    counts = SkillCounts.from_results({"a": [ADD], "b": [ADD], "c": [MUL], "d": [LIN]},
                                      {"a": [True], "b": [True], "c": [False], "d": [False]})
    raw = {n: counts.accuracy(n) for n in counts.nodes()}
    assert counts.shrunk_accuracies(0.0) == raw
    shrunk = counts.shrunk_accuracies(2.0)
    root = 2 / 4
    arith = (2 + 2 * root) / (3 + 2)  # 0.6
    assert shrunk[()] == root
    assert shrunk[("Arithmetic",)] == pytest.approx(arith)
    assert shrunk[ADD] == pytest.approx((2 + 2 * arith) / (2 + 2))  # 0.8
    assert shrunk[MUL] == pytest.approx((0 + 2 * arith) / (1 + 2))  # 0.4
    rows = {r["chain"]: r for r in counts.rows(shrinkage=2.0)}
    assert rows["Arithmetic->addition"]["accuracy"] == 1.0
    assert rows["Arithmetic->addition"]["accuracy_shrunk"] == pytest.approx(0.8)
    assert "accuracy_shrunk" not in counts.rows(shrinkage=0.0)[0]


# ---- attribution files ------------------------------------------------------------------------------------
def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_attribution_validates_and_drops(tmp_path, tree):
    good = _write_jsonl(tmp_path / "a.jsonl", [
        {"id": "x", "chains": [list(ADD), list(ADD), list(LIN)]}, {"id": 7, "chains": []}])
    attr = load_attribution(good, tree)
    assert attr == {"x": [ADD, LIN], "7": []}
    assert (attr.rows, attr.dropped_chains, attr.with_chains()) == (2, 0, 1)

    bad = _write_jsonl(tmp_path / "b.jsonl", [
        {"id": "x", "chains": [list(ADD)]}, {"id": "y", "chains": [["Arithmetic", "division"], list(MUL)]},
        {"id": "z", "chains": [["Algebra"]]}])
    with pytest.raises(DataError, match=r"b\.jsonl:2 .*unknown skill 'division'"):
        load_attribution(bad, tree)
    dropped = load_attribution(bad, tree, on_unknown="drop")
    assert dropped == {"x": [ADD], "y": [MUL], "z": []}
    assert (dropped.dropped_chains, dropped.dropped_examples) == (2, ["z"])

    cut = load_attribution(good, tree.cut(1), max_depth=1)
    assert cut == {"x": [("Arithmetic",), ("Algebra",)], "7": []}

    dup = _write_jsonl(tmp_path / "c.jsonl", [{"id": "x", "chains": []}, {"id": "x", "chains": []}])
    with pytest.raises(DataError, match=r"c\.jsonl:2: duplicate id 'x'"):
        load_attribution(dup, tree)
    with pytest.raises(DataError, match="field 'chains'"):
        load_attribution(_write_jsonl(tmp_path / "d.jsonl", [{"id": "x"}]), tree)


def test_reference_answers():
    assert reference_answers('["1", "2"]') == ["1", "2"]
    assert reference_answers("[0, 1]") == "[0, 1]"  # an interval, not a list of answers
    assert reference_answers("\\frac{1}{2}") == "\\frac{1}{2}"


# ---- the profile stage with a real student ----------------------------------------------------------------
PROBLEMS = [  # id, problem, answer, chains (None: no attribution row)
    ("p0", "What is 2 + 3?", "5", [ADD]),
    ("p1", "What is 4 * 6?", "24", [MUL]),
    ("p2", "Solve x + 3 = 7 for x.", "4", [LIN, ADD]),
    ("p3", "What is 7 * 8 + 1?", "57", [MUL, ADD]),
    ("p4", "Solve x^2 = 9 for x > 0.", "3", [QUAD]),
    ("p5", "What is 10 + 15?", "25", []),
    ("p6", "Solve 2x = 10 for x.", "5", [LIN]),
    ("p7", "What is 3 * 3?", "9", None),
]
SAMPLING = SamplingConfig(temperature=0.6, top_p=1.0, max_new_tokens=8, n=2, seed=3)
CHUNK = 4  # problems per generate call


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("profile_inputs")
    (d / "tree.json").write_text(json.dumps(TREE))
    _write_jsonl(d / "pool.jsonl", [{"id": i, "problem": p, "trace": f"<think>.</think> \\boxed{{{a}}}", "answer": a,
                                     "pass_rate": None} for i, p, a, _ in PROBLEMS])
    _write_jsonl(d / "attribution.jsonl", [{"id": i, "chains": [list(c) for c in ch]}
                                           for i, _, _, ch in PROBLEMS if ch is not None])
    return {"pool": str(d / "pool.jsonl"), "tree": str(d / "tree.json"), "attribution": str(d / "attribution.jsonl")}


@pytest.fixture(scope="module")
def backend_cfg(smollm2_vllm_config) -> BackendConfig:
    return smollm2_vllm_config


class _Reused(GenerationBackend):
    """The session's real vLLM engine (tests/conftest.py), handed out again by the factory (starting one per run is
    the slow part), counting this module's calls."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def generate(self, *args, **kwargs):
        self.calls += 1
        return self.inner.generate(*args, **kwargs)

    def close(self):  # the session fixture closes the engine
        pass


@pytest.fixture(scope="module")
def student(smollm2_vllm):
    return _Reused(smollm2_vllm)


@pytest.fixture
def profile_run(monkeypatch, student, backend_cfg, inputs):
    import skill_distill.profile as profile_mod

    def factory(cfg):
        assert cfg == backend_cfg
        return student

    monkeypatch.setattr(profile_mod, "make_backend", factory)

    def run(output_dir, **kw):
        kw.setdefault("grading", GradingConfig(workers=0))
        return run_profile(**inputs, output_dir=str(output_dir), backend=backend_cfg, sampling=SAMPLING,
                           chunk_size=CHUNK, **kw)

    return run


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _nodes(path: Path) -> list[dict]:
    return json.loads(path.read_text())["nodes"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, student, backend_cfg, inputs):
    """One complete single-shard run (grading workers are covered by test_grading.py)."""
    out = tmp_path_factory.mktemp("full")
    import skill_distill.profile as profile_mod

    mp = pytest.MonkeyPatch()
    mp.setattr(profile_mod, "make_backend", lambda cfg: student)
    try:
        summary = run_profile(**inputs, output_dir=str(out), backend=backend_cfg, sampling=SAMPLING, chunk_size=CHUNK,
                              grading=GradingConfig(workers=0), shrinkage=1.0)
    finally:
        mp.undo()
    return out, summary


@pytest.mark.vllm
def test_profile_files_and_counts(full_run, tree, backend_cfg):
    out, summary = full_run
    assert summary["problems"] == 8 and summary["answered_this_run"] == 8
    rows = _rows(out / "verdicts.jsonl")
    assert len(rows) == 16 and {(r["id"], r["sample"]) for r in rows} == {(p[0], s) for p in PROBLEMS for s in (0, 1)}
    for r in rows:
        assert set(r) == {"id", "sample", "correct", "extracted", "num_tokens", "truncated"}
        assert 0 < r["num_tokens"] <= 8 and isinstance(r["correct"], bool)
        if r["truncated"]:
            assert r["num_tokens"] == 8 and r["extracted"] is None and not r["correct"]
    profile = json.loads((out / "profile.json").read_text())
    assert profile["student"] == backend_cfg.model and profile["tree"] == str(Path(profile["tree"]).resolve())
    assert profile["sampling"] == {"temperature": 0.6, "top_p": 1.0, "max_new_tokens": 8, "n": 2, "seed": 3}
    assert (profile["examples"], profile["samples"], profile["examples_without_chains"]) == (8, 16, 2)
    assert profile["truncation_rate"] == sum(r["truncated"] for r in rows) / 16
    assert profile["interval"].startswith("bootstrap")
    nodes = {n["chain"]: n for n in profile["nodes"]}
    assert nodes[""]["judged"] == 8 and nodes[""]["samples"] == 16
    with_chains = sum(1 for p in PROBLEMS if p[3])
    assert sum(n["judged"] for n in nodes.values() if n["is_leaf"]) >= with_chains
    assert nodes["Arithmetic->addition"]["judged"] == 3 and nodes["Arithmetic"]["judged"] == 4
    # recompute every node from the verdict rows
    mean = {}
    for r in rows:
        mean.setdefault(r["id"], []).append(r["correct"])
    chains = {i: ch or [] for i, _, _, ch in PROBLEMS}
    expected = SkillCounts.from_results(chains, mean)
    for node in expected.nodes():
        row = nodes["->".join(node)]
        assert row["correct"] == pytest.approx(expected.correct(node))
        assert row["accuracy"] == pytest.approx(expected.accuracy(node))
        assert row["ci_low"] <= row["accuracy"] <= row["ci_high"]
        assert "accuracy_shrunk" in row
    assert profile["overall_accuracy"] == pytest.approx(expected.accuracy(()))

    accs = load_profile(out / "profile.json", tree)
    assert set(accs) == {ADD, MUL, LIN, QUAD}
    assert load_profile(out / "profile.json", tree, value="judged") == {ADD: 3, MUL: 2, LIN: 2, QUAD: 1}
    topics = load_profile(out / "profile.json", tree.cut(1), value="judged")
    assert topics == {("Arithmetic",): 4, ("Algebra",): 3}


@pytest.mark.vllm
def test_resume_after_deleting_half_and_a_torn_line(full_run, profile_run, tmp_path, student, inputs, backend_cfg):
    out, _ = full_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    (resumed / "profile.json").unlink()
    rows = _rows(resumed / "verdicts.jsonl")
    kept = rows[:7]  # 3 whole problems and the first sample of a fourth (then chunks differ from the first run)
    (resumed / "verdicts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"id": "p5", "sam')
    calls = student.calls
    summary = profile_run(resumed, shrinkage=1.0)
    assert summary["answered_this_run"] == 5 and student.calls > calls
    assert sorted(map(json.dumps, _rows(resumed / "verdicts.jsonl"))) == sorted(map(json.dumps, rows))
    assert _nodes(resumed / "profile.json") == _nodes(out / "profile.json")
    # a finished run does nothing but rewrite the profile; other settings in the same directory are refused
    calls = student.calls
    assert profile_run(resumed, shrinkage=1.0)["answered_this_run"] == 0 and student.calls == calls
    with pytest.raises(DataError, match="different sampling"):
        run_profile(**inputs, output_dir=str(resumed), backend=backend_cfg, sampling=SamplingConfig(n=1))


@pytest.mark.vllm
def test_keep_texts_stores_what_was_graded(full_run, profile_run, tmp_path):
    """``keep_texts``: each verdict row also carries its completion's text; everything else is the plain run's."""
    out, _ = full_run
    profile_run(tmp_path / "texts", shrinkage=1.0, keep_texts=True)
    rows = _rows(tmp_path / "texts" / "verdicts.jsonl")
    assert all(isinstance(r["text"], str) and r["text"].strip() for r in rows)
    plain = sorted(map(json.dumps, _rows(out / "verdicts.jsonl")))
    assert sorted(json.dumps({k: v for k, v in r.items() if k != "text"}) for r in rows) == plain
    boxed = [r for r in rows if r["extracted"] is not None and "\\boxed" in r["text"]]
    assert all(r["extracted"] in r["text"] for r in boxed)


@pytest.mark.vllm
def test_shards_then_merge_equal_one_run(full_run, profile_run, tmp_path):
    out, _ = full_run
    sharded = tmp_path / "sharded"
    with pytest.raises(DataError, match="shard 0 of 2 has not run"):
        merge_profile_shards(str(sharded), 2)
    first = profile_run(sharded, shard_index=0, num_shards=2, shrinkage=1.0)
    second = profile_run(sharded, shard_index=1, num_shards=2, shrinkage=1.0)
    assert (first["problems"], second["problems"]) == (4, 4) and "profile" not in first
    assert not (sharded / "profile.json").exists()
    merge_profile_shards(str(sharded), 2, shrinkage=1.0)
    assert _nodes(sharded / "profile.json") == _nodes(out / "profile.json")
    union = _rows(sharded / "verdicts.shard-0-of-2.jsonl") + _rows(sharded / "verdicts.shard-1-of-2.jsonl")
    assert sorted(map(json.dumps, union)) == sorted(map(json.dumps, _rows(out / "verdicts.jsonl")))

    shard1 = sharded / "verdicts.shard-1-of-2.jsonl"
    rows1 = _rows(shard1)
    shard1.write_text("".join(json.dumps(r) + "\n" for r in rows1 if r["id"] != "p3"))
    with pytest.raises(DataError, match=r"shard-1-of-2\.jsonl: 1 problems of shard 1 .*\(p3\)"):
        merge_profile_shards(str(sharded), 2)
    stolen = [r for r in _rows(sharded / "verdicts.shard-0-of-2.jsonl") if r["id"] == "p0"]
    shard1.write_text("".join(json.dumps(r) + "\n" for r in rows1 + stolen))
    with pytest.raises(DataError, match=r"ids already graded by shard 0: p0"):
        merge_profile_shards(str(sharded), 2)


def test_bad_inputs_are_one_line_errors(inputs, backend_cfg, tmp_path):
    with pytest.raises(DataError, match="shard_index"):
        run_profile(**inputs, output_dir=str(tmp_path), backend=backend_cfg, shard_index=2, num_shards=2)
    bad = _write_jsonl(tmp_path / "attr.jsonl", [{"id": "p0", "chains": [["Geometry", "circles"]]}])
    with pytest.raises(DataError, match=r"attr\.jsonl:1 .*unknown skill 'Geometry'"):
        run_profile(inputs["pool"], inputs["tree"], str(bad), str(tmp_path), backend_cfg)
    no_answer = _write_jsonl(tmp_path / "pool.jsonl", [{"id": "q", "problem": "?", "trace": "", "answer": ""}])
    with pytest.raises(DataError, match="no reference answer"):
        run_profile(str(no_answer), inputs["tree"], inputs["attribution"], str(tmp_path), backend_cfg)


# ---- shipped configs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["profile_quickstart.yaml", "profile_qwen3_4b_omr.yaml"])
def test_shipped_profile_configs_parse(name):
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(run_profile)
    cfg = parser.instantiate_classes(parser.parse_args(["--config", str(REPO / "configs" / "pipeline" / name)]))
    assert isinstance(cfg.backend, BackendConfig) and cfg.backend.kind == "vllm" and cfg.backend.model
    assert isinstance(cfg.sampling, SamplingConfig)
    if name == "profile_qwen3_4b_omr.yaml":  # docs/METHOD.md §3
        assert (cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_new_tokens, cfg.sampling.n) == (
            0.6, 1.0, 8192, 1)
        assert cfg.enable_thinking is True and cfg.backend.tensor_parallel_size == 1
        assert cfg.pool.startswith("data/omr/")
    else:
        assert cfg.backend.model == "asset:smollm2-135m-instruct" and cfg.sampling.max_new_tokens <= 512
        assert cfg.pool.startswith("data/quickstart/")


def test_the_shipped_profile_run_resumes_in_another_checkout_and_refuses_changed_inputs(tmp_path, monkeypatch,
                                                                                        capsys):
    """The shipped quickstart profile, rerun with its own command from a checkout elsewhere, is recognised as the
    same finished run (inputs compared by content, not by this machine's paths) and writes the same profile; a
    changed input is refused naming it (issue 28: it was refused in any other checkout)."""
    from skill_distill.__main__ import main

    checkout = tmp_path / "elsewhere"
    shutil.copytree(REPO / "data" / "quickstart", checkout / "data" / "quickstart")
    config = str(REPO / "configs" / "pipeline" / "profile_quickstart.yaml")
    monkeypatch.chdir(checkout)
    main(["profile", "--config", config])  # every verdict is there: no engine is started
    assert "0 answered this run" in capsys.readouterr().out
    assert _nodes(checkout / "data/quickstart/profile/profile.json") == _nodes(
        REPO / "data/quickstart/profile/profile.json")
    shipped_run = json.loads((REPO / "data/quickstart/profile/profile_run.json").read_text())
    assert json.loads((checkout / "data/quickstart/profile/profile_run.json").read_text()) == shipped_run

    tree = checkout / "data" / "quickstart" / "tree.json"
    tree.write_text(tree.read_text().replace("}", "} ", 1))  # same tree, other bytes: a changed file
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--config", config])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "holds a profile run with different tree;" in err and len(err.strip().splitlines()) == 1


def test_reaggregation_equals_the_profile_and_counts_under_another_tree(tmp_path, capsys):
    """The shipped quickstart verdicts re-counted: under the same tree and attribution, the shipped profile's rows;
    under the tree cut to its topics (and the attribution cut with it), each topic's row equals the shipped
    profile's topic row. No backend is involved (issue 27: a second tree regenerated every answer)."""
    from skill_distill.__main__ import main
    from skill_distill.profile import reaggregate_profile

    quick = REPO / "data" / "quickstart"
    shipped = {n["chain"]: n for n in _nodes(quick / "profile" / "profile.json")}
    same = reaggregate_profile(str(quick / "profile"), str(quick / "tree.json"), str(quick / "attribution.jsonl"),
                               str(tmp_path / "same"))
    assert _nodes(Path(same["profile"])) == list(shipped.values())

    tree = SkillTree.load(quick / "tree.json")
    topics = tree.cut(1)
    (tmp_path / "topics.json").write_text(json.dumps(topics.to_dict()))
    rows = [json.loads(x) for x in (quick / "attribution.jsonl").read_text().splitlines() if x.strip()]
    (tmp_path / "topics.jsonl").write_text("".join(
        json.dumps({"id": r["id"], "chains": [[c[0]] for c in r["chains"]]}) + "\n" for r in rows))
    main(["reaggregate-profile", "--verdicts_dir", str(quick / "profile"), "--tree", str(tmp_path / "topics.json"),
          "--attribution", str(tmp_path / "topics.jsonl"), "--output_dir", str(tmp_path / "topics")])
    assert "counted under" in capsys.readouterr().out
    by_topic = _nodes(tmp_path / "topics" / "profile.json")
    assert sorted(n["chain"] for n in by_topic if n["is_leaf"]) == sorted(topics.topics()) and len(topics.topics()) > 1
    for n in by_topic:
        assert (n["correct"], n["judged"], n["accuracy"]) == tuple(shipped[n["chain"]][k] for k in
                                                                   ("correct", "judged", "accuracy")), n["chain"]
    with pytest.raises(DataError, match="is the verdicts' run directory"):
        reaggregate_profile(str(quick / "profile"), str(quick / "tree.json"), str(quick / "attribution.jsonl"),
                            str(quick / "profile"))
