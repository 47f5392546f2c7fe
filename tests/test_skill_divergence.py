"""The held-out teacher-student divergence per skill (issue 23 part 5): a tiny Qwen3 student and a different tiny
Qwen3 teacher on the real Qwen3 tokenizer, real quickstart held-out rows.

- ``FrozenTeacher.example_divergence`` (chunked, packed or padded batches) equals, per example, the mean over its
  supervised tokens of a dense ``F.kl_div`` over both models' full logits (each example run alone), to 1e-5 in fp32;
  a student identical to the teacher gives 0.
- ``summarize_divergence`` aggregates per skill node as per-skill accuracy is (examples as the unit).
- A ``train.py fit`` with a teacher and SkillEvalCallback (HF generate backend): every epoch's report holds the
  per-skill KL beside the per-skill accuracy (report.json, report.md, the chart) and the metrics are logged.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml

from datamodules.batching import IGNORE_INDEX, SFTCollator, encode_example
from skill_distill.formatting import end_of_turn_token, render_prompt, user_turn

REPO = Path(__file__).resolve().parents[1]
QS = REPO / "data" / "quickstart"


def heldout_rows(n: int) -> list[dict]:
    return [json.loads(line) for line in (QS / "heldout.jsonl").read_text().splitlines()[:n]]


def tokenized(tokenizer, rows: list[dict]):
    eot = end_of_turn_token(tokenizer)
    return [encode_example(tokenizer, r["id"], render_prompt(tokenizer, user_turn(r["problem"])), r["trace"] + eot,
                           512) for r in rows]


def quickstart_tree_and_chains():
    """The quickstart skill tree and every example's chains (its attribution file)."""
    from skill_distill.skill_tree import SkillTree

    chains = {}
    for line in (QS / "attribution.jsonl").read_text().splitlines():
        row = json.loads(line)
        chains[row["id"]] = [tuple(c) for c in row["chains"]]
    return SkillTree.load(str(QS / "tree.json")), chains


def student_with_teacher(student: Path, teacher: Path):
    from lightning_modules import CausalLMModule
    from lightning_modules.distill_loss import DistillationConfig

    module = CausalLMModule(model=str(student), attn_implementation="sdpa_packed",
                            distillation=DistillationConfig(teacher=str(teacher), teacher_dtype="float32"))
    module.configure_model()
    return module.model.eval(), module.teacher


def dense_reference(student, teacher, example) -> float:
    """Mean over the example's supervised tokens of KL(teacher || student) from both models' full logits."""
    ids = torch.tensor([example.input_ids])
    labels = torch.tensor([example.labels])
    with torch.no_grad():
        student_logits = student(input_ids=ids, use_cache=False).logits[0]
        teacher_logits = teacher.model(input_ids=ids, use_cache=False).logits[0]
    supervised = labels[0] != IGNORE_INDEX
    # F.kl_div(input = log q_student, target = log p_teacher) = sum p_teacher (log p_teacher - log q_student)
    kl = F.kl_div(torch.log_softmax(student_logits[supervised].double(), -1),
                  torch.log_softmax(teacher_logits[supervised].double(), -1), log_target=True,
                  reduction="none").sum(-1)
    return float(kl.mean())


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    from skill_distill.assets import tiny_qwen3_dir

    return tiny_qwen3_dir(tmp_path_factory.mktemp("teacher") / "tiny-qwen3-seed1", seed=1)


@pytest.mark.slow
def test_per_example_divergence_equals_a_dense_kl_div_and_is_zero_for_the_teacher_itself(
        tiny_qwen3_dir, teacher_dir, qwen_tokenizer):
    examples = tokenized(qwen_tokenizer, heldout_rows(5))
    student, teacher = student_with_teacher(tiny_qwen3_dir, teacher_dir)
    reference = {e.example_id: dense_reference(student, teacher, e) for e in examples}
    assert all(v > 0.01 for v in reference.values())  # two different random models: far from 0
    for packing in (True, False):
        batch = SFTCollator(pad_token_id=0, packing=packing).collate(examples)
        scored = teacher.example_divergence(student, batch, "forward_kl", chunk_size=7)  # chunks cross examples
        assert set(scored) == set(reference)
        for e in examples:
            total, tokens = scored[e.example_id]
            assert tokens == e.num_supervised
            assert total / tokens == pytest.approx(reference[e.example_id], abs=1e-5, rel=1e-5), (packing, e.example_id)

    same_student, same_teacher = student_with_teacher(tiny_qwen3_dir, tiny_qwen3_dir)
    batch = SFTCollator(pad_token_id=0, packing=True).collate(examples)
    scored = same_teacher.example_divergence(same_student, batch, "forward_kl", chunk_size=7)
    assert len(scored) == len(examples) and all(abs(total) < 1e-5 * tokens for total, tokens in scored.values())


def test_divergence_is_aggregated_per_skill_like_accuracy():
    from skill_distill.evaluation import add_divergence, flat_metrics, summarize_divergence
    from skill_distill.skill_tree import parse_chain

    tree, chains = quickstart_tree_and_chains()
    ids = [r["id"] for r in heldout_rows(40) if chains.get(r["id"])][:30]
    per_example = {ex: (0.1 * (i + 1) * (i % 4 + 1), i % 4 + 1) for i, ex in enumerate(ids)}  # sum, tokens
    mean = {ex: total / n for ex, (total, n) in per_example.items()}
    out = summarize_divergence(per_example, chains, tree, resamples=200)
    assert out["direction"] == "KL(teacher || student)" and out["examples"] == len(ids)
    assert out["tokens"] == sum(n for _, n in per_example.values())
    assert out["kl"] == pytest.approx(sum(mean.values()) / len(mean))
    leaves = [r for r in out["skills"] if r["is_leaf"]]
    assert leaves
    for row in out["skills"]:
        node = parse_chain(row["chain"])
        under = [mean[ex] for ex in ids if any(tuple(c[:len(node)]) == node for c in chains[ex])]
        assert row["examples"] == len(under) and row["kl"] == pytest.approx(sum(under) / len(under))
        assert row["ci_low"] <= row["kl"] <= row["ci_high"]
    summary = {"skills": [{"chain": r["chain"], "accuracy": 0.5} for r in out["skills"]] + [
        {"chain": "not->scored", "accuracy": 1.0}]}
    add_divergence(summary, out)
    assert [r["kl"] for r in summary["skills"][:-1]] == [r["kl"] for r in out["skills"]]
    assert summary["skills"][-1]["kl"] is None
    metrics = flat_metrics({"heldout": summary})
    assert metrics["eval/heldout/kl"] == pytest.approx(out["kl"])
    leaf = leaves[0]
    assert metrics["eval/heldout/skill_kl/" + "/".join(x.replace("/", "_").strip() for x in parse_chain(
        leaf["chain"]))] == pytest.approx(leaf["kl"])


def own_samples(student, tokenizer, rows: list[dict], n: int, max_new_tokens: int) -> list[dict]:
    """Evaluation records of the student's own samples (sampled with HF generate): benchmark, index, sample, text."""
    records = []
    torch.manual_seed(0)
    for index, r in enumerate(rows):
        prompt = tokenizer(render_prompt(tokenizer, user_turn(r["problem"])), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = student.generate(torch.tensor([prompt]), do_sample=True, max_new_tokens=max_new_tokens,
                                   num_return_sequences=n, pad_token_id=0)
        for j in range(n):
            records.append({"benchmark": "heldout", "index": index, "sample": j,
                            "text": tokenizer.decode(out[j, len(prompt):], skip_special_tokens=True)})
    return records


def dense_reverse_reference(student, teacher, tokenizer, rows, records) -> dict[str, float]:
    """Per problem: KL(student || teacher) summed over every completion token of its samples (full logits of both
    models, ``F.kl_div``, each sample run alone), divided by those tokens."""
    sums: dict[str, list[float]] = {}
    for rec in records:
        row = rows[rec["index"]]
        prompt = tokenizer(render_prompt(tokenizer, user_turn(row["problem"])), add_special_tokens=False)["input_ids"]
        completion = tokenizer(rec["text"], add_special_tokens=False)["input_ids"]
        if not completion:
            continue
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            s_logits = student(input_ids=ids, use_cache=False).logits[0]
            t_logits = teacher.model(input_ids=ids, use_cache=False).logits[0]
        rows_at = slice(len(prompt) - 1, len(prompt) + len(completion) - 1)  # the positions predicting completion
        # F.kl_div(input = log p_teacher, target = log q_student) = sum q_student (log q_student - log p_teacher)
        kl = F.kl_div(torch.log_softmax(t_logits[rows_at].double(), -1),
                      torch.log_softmax(s_logits[rows_at].double(), -1), log_target=True, reduction="none").sum(-1)
        total = sums.setdefault(row["id"], [0.0, 0])
        total[0] += float(kl.sum())
        total[1] += len(completion)
    return {k: v[0] / v[1] for k, v in sums.items()}


@pytest.mark.slow
def test_kl_on_the_students_own_samples_equals_a_dense_reverse_kl_and_is_zero_for_the_teacher_itself(
        tiny_qwen3_dir, teacher_dir, qwen_tokenizer):
    """On-policy runs' held-out KL(student || teacher) on the student's own samples (``own_sample_batches``,
    ``score_own_samples``, ``pool_own_samples``): per problem, pooled over its samples, chunked (chunks and
    micro-batches cross samples and problems), equal to a dense reference to 1e-5 in fp32; padding rounds (a rank
    with fewer micro-batches repeats its last one) change nothing; 0 for a student identical to the teacher."""
    from callbacks.skill_eval import SAMPLE_KL, own_sample_batches, pool_own_samples, score_own_samples

    rows = heldout_rows(3)
    heldout = SimpleNamespace(problems=[SimpleNamespace(id=r["id"], problem=r["problem"]) for r in rows])
    student, teacher = student_with_teacher(tiny_qwen3_dir, teacher_dir)
    records = own_samples(student, qwen_tokenizer, rows, n=2, max_new_tokens=12)
    reference = dense_reverse_reference(student, teacher, qwen_tokenizer, rows, records)
    assert len(reference) == 3 and all(v > 0.01 for v in reference.values())  # two different random models
    batches = own_sample_batches(qwen_tokenizer, heldout, records, None, True, None, None, examples_per_batch=4)
    assert len(batches) == 2
    score_own_samples(student, teacher, batches, records, chunk_size=7, device=torch.device("cpu"), rounds=3)
    assert all(len(r[SAMPLE_KL]) == 2 and r[SAMPLE_KL][1] > 0 for r in records)
    scored = pool_own_samples(heldout, records)
    assert set(scored) == set(reference)
    for problem_id, (total, tokens) in scored.items():
        assert total / tokens == pytest.approx(reference[problem_id], abs=1e-5, rel=1e-5), problem_id

    same_student, same_teacher = student_with_teacher(tiny_qwen3_dir, tiny_qwen3_dir)
    for r in records:
        del r[SAMPLE_KL]
    score_own_samples(same_student, same_teacher, batches, records, chunk_size=7, device=torch.device("cpu"))
    scored = pool_own_samples(heldout, records)
    assert len(scored) == 3 and all(abs(total) < 1e-5 * tokens for total, tokens in scored.values())


def test_the_kl_on_own_samples_is_reported_beside_the_teacher_trace_kl(tmp_path):
    """report.json, report.md, the chart and the metrics carry both KLs per skill."""
    from skill_distill.evaluation import (
        add_divergence,
        build_report,
        flat_metrics,
        report_markdown,
        summarize_divergence,
    )
    from skill_distill.skill_charts import plot_skills

    tree, chains = quickstart_tree_and_chains()
    ids = [r["id"] for r in heldout_rows(40) if chains.get(r["id"])][:12]
    traces = summarize_divergence({ex: (0.2 * (i + 1), 4) for i, ex in enumerate(ids)}, chains, tree, resamples=50)
    samples = summarize_divergence({ex: (0.5 * (i + 1), 5) for i, ex in enumerate(ids)}, chains, tree, resamples=50)
    samples["direction"] = "KL(student || teacher)"
    summary = {"accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "k": 1, "problems": 12, "confidence": 0.95,
               "skills": [{"chain": r["chain"], "accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6, "judged": 3,
                           "is_leaf": r["is_leaf"], "depth": r["depth"]} for r in traces["skills"]]}
    add_divergence(summary, traces)
    add_divergence(summary, samples, key="sample_divergence", row_key="sample_kl")
    metrics = flat_metrics({"heldout": summary})
    assert metrics["eval/heldout/kl"] == pytest.approx(traces["kl"])
    assert metrics["eval/heldout/sample_kl"] == pytest.approx(samples["kl"]) and samples["kl"] != traces["kl"]
    assert sum(k.startswith("eval/heldout/skill_sample_kl/") for k in metrics) == len(samples["skills"])
    report = build_report([], [], {"heldout": summary}, {"tag": "epoch=0"})
    report["benchmarks"] = {"heldout": {"metrics": summary}}
    assert report["summary"]["heldout"]["sample_kl"] == samples["kl"]
    markdown = report_markdown(report)
    assert "KL(student \\|\\| teacher) on own samples" in markdown and "KL on own samples (nats/token)" in markdown
    leaf = next(r for r in summary["skills"] if r["is_leaf"])
    assert f"| {leaf['chain']} | yes |" in markdown and f"{leaf['kl']:.4f} | {leaf['sample_kl']:.4f} |" in markdown
    assert plot_skills(report, "heldout", tmp_path / "skills_heldout.png")
    assert (tmp_path / "skills_heldout.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a fit, an HF-generate evaluation in a child process, on a shared, loaded 2-core machine
def test_a_fit_with_a_teacher_reports_the_per_skill_kl_beside_accuracy(tmp_path, monkeypatch, tiny_qwen3_dir,
                                                                        teacher_dir):
    import train

    monkeypatch.chdir(tmp_path)
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    for key in ("corpus", "tree", "attribution", "val_corpus"):
        cfg["data"][key] = str(REPO / cfg["data"][key])
    cfg["trainer"]["logger"] = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                 "init_args": {"save_dir": "runs/q", "name": "logs", "version": ""}}]
    callbacks = [c for c in cfg["trainer"]["callbacks"]
                 if not any(k in c["class_path"] for k in ("RichProgressBar", "HFExport"))]
    entry = next(c for c in callbacks if c["class_path"] == "callbacks.SkillEvalCallback")
    entry["init_args"].update(
        benchmarks=[{"name": "heldout", "limit_per_skill": 1, "k": 1}], baseline=False, every_n_epochs=2,
        export_dtype=None, sampling={"temperature": 0.0, "max_new_tokens": 4},
        backend={"class_path": "HFConfig", "init_args": {"batch_size": 8}}, grading={"workers": 0})
    cfg["trainer"]["callbacks"] = callbacks
    config = tmp_path / "q.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cli = train.main(["fit", "--config", str(config), f"--model.model={tiny_qwen3_dir}",
                      f"--data.tokenizer={tiny_qwen3_dir}", f"--model.distillation.teacher={teacher_dir}",
                      "--model.distillation.teacher_dtype=float32", "--data.selection.strategy=random",
                      "--data.selection.budget=16", "--data.profile=null", "--trainer.precision=32-true",
                      "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
                      "--trainer.max_epochs=2", "--trainer.default_root_dir=runs/q"])
    assert cli.trainer.global_step == 4
    run = tmp_path / "runs" / "q"
    report = json.loads((run / "eval" / "epoch=1" / "report.json").read_text())
    metrics = report["benchmarks"]["heldout"]["metrics"]
    divergence = metrics["divergence"]
    assert divergence["direction"] == "KL(teacher || student)" and divergence["kl"] > 0.01
    assert divergence["examples"] == metrics["judged_problems"]  # the problems whose accuracy is shown
    assert report["summary"]["heldout"]["kl"] == divergence["kl"]
    leaves = [r for r in metrics["skills"] if r["is_leaf"]]
    assert leaves and all(r["accuracy"] is not None and r["kl"] > 0 for r in leaves)
    markdown = (run / "eval" / "epoch=1" / "report.md").read_text()
    assert "KL (nats/token)" in markdown and f"| {leaves[0]['chain']} | yes |" in markdown
    assert f"{leaves[0]['kl']:.4f} |" in markdown
    assert (run / "eval" / "epoch=1" / "skills_heldout.png").stat().st_size > 0
    # the per-step training metrics of the last step reach the report (json and markdown)
    assert {"train/loss", "train/forward_kl", "train/lr"} <= set(report["training"])
    assert f"| train/forward_kl | {report['training']['train/forward_kl']:.6g} |" in markdown
    with (run / "logs" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    logged = [float(r["eval/heldout/kl"]) for r in rows if r.get("eval/heldout/kl")]
    # every epoch: epoch 0 logged only (every_n_epochs=2), epoch 1 in the report as well
    assert len(logged) == 2 and logged[-1] == pytest.approx(divergence["kl"])
    assert any(r.get("eval/heldout/acc") for r in rows)


def one_process_and_two_ranks(tmp_path: Path, *args: str) -> tuple[dict, dict]:
    """What tests/scripts/heldout_kl_ranks.py writes in one process and on 2 gloo ranks (FSDP2)."""
    import os
    import subprocess
    import sys

    sys.path.insert(0, str(REPO / "tests" / "scripts"))
    import heldout_kl_ranks

    import launch

    heldout_kl_ranks.main([*args, "--run_dir", str(tmp_path / "one"), "--out", str(tmp_path / "one.json")])
    env = launch.script_env(launch.free_port(), PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests' / 'scripts'}")
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "heldout_kl_ranks.py"), *args,
                           "--run_dir", str(tmp_path / "two"), "--out", str(tmp_path / "two.json"), "--devices", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    return one, two


def assert_same_per_skill(one: dict, two: dict) -> None:
    assert two["kl"] == pytest.approx(one["kl"], rel=1e-5, abs=1e-5)
    assert [r["chain"] for r in two["skills"]] == [r["chain"] for r in one["skills"]]
    for a, b in zip(one["skills"], two["skills"], strict=True):
        assert (b["examples"], b["kl"]) == (a["examples"], pytest.approx(a["kl"], rel=1e-5, abs=1e-5)), a["chain"]


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_two_fsdp2_ranks_give_the_one_process_held_out_kl(tmp_path, tiny_qwen3_dir, teacher_dir):
    """``held_out_divergence`` under ModelParallelStrategy (FSDP2, 2 gloo ranks, each scoring its share of the
    held-out slice, the per-example sums gathered) equals the one-process value per skill, to 1e-5. With a held-out
    set of one problem, the rank without an example takes part in the sharded forwards with the filler and the
    value still equals the one-process one."""
    one, two = one_process_and_two_ranks(tmp_path, "--student", str(tiny_qwen3_dir), "--teacher", str(teacher_dir))
    assert one["slice"]["kl"] > 0.01 and one["slice"]["examples"] >= 4 and len(one["slice"]["skills"]) >= 2
    assert one["one_problem"]["examples"] == 1 and one["one_problem"]["kl"] > 0.01
    for measure in ("slice", "one_problem"):
        assert (two[measure]["examples"], two[measure]["tokens"]) == (one[measure]["examples"],
                                                                      one[measure]["tokens"]), measure
        assert_same_per_skill(one[measure], two[measure])


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_two_fsdp2_ranks_give_the_one_process_kl_on_the_students_own_samples(tmp_path, tiny_qwen3_dir, teacher_dir):
    """An on-policy student's held-out evaluation (``SkillEvalCallback.evaluate``: export, generation, each rank
    scoring KL(student || teacher) on its own samples before the gather, the report) under ModelParallelStrategy
    (FSDP2, student and teacher sharded, 2 gloo ranks) equals the one-process evaluation per skill, to 1e-5, with
    the same sample, problem and token counts. With one held-out problem and one sample, the rank without a sample
    scores the filler in every sharded forward and the value still equals the one-process one."""
    both = one_process_and_two_ranks(tmp_path, "--student", str(tiny_qwen3_dir), "--teacher", str(teacher_dir),
                                     "--own_samples")
    one, two = (measured["slice"] for measured in both)
    assert one["direction"] == "KL(student || teacher)" and one["kl"] > 0.01
    assert one["samples"] == 2 * one["examples"] and one["examples"] >= 4 and len(one["skills"]) >= 2
    assert one["tokens"] > one["samples"]  # sampled completions of several tokens
    assert (two["samples"], two["examples"], two["tokens"]) == (one["samples"], one["examples"], one["tokens"])
    assert_same_per_skill(one, two)
    one, two = (measured["one_problem"] for measured in both)
    assert (one["samples"], one["examples"]) == (1, 1) and one["tokens"] > 1 and one["kl"] > 0.01
    assert (two["samples"], two["examples"], two["tokens"]) == (one["samples"], one["examples"], one["tokens"])
    assert_same_per_skill(one, two)
