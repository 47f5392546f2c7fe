"""SkillEvalCallback inside real fits of the quickstart config: reports and charts per evaluation, logged metrics,
engine failures (raise / skip), and two CPU ranks (DDP, and FSDP2 as in the production configs) generating
disjoint shares that equal one rank's run."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import train
from callbacks.skill_eval import SkillEvalCallback, rank_cores
from skill_distill.generation.base import GenerationError
from skill_distill.io import ConfigError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "scripts"))
import launch  # noqa: E402 - importable only after the sys.path.insert above

QS = REPO / "data" / "quickstart"
SCRIPT = REPO / "tests" / "scripts" / "eval_two_ranks.py"


def quickstart_config(tmp_path: Path, **callback_args) -> Path:
    """configs/quickstart.yaml with absolute data paths, a CSV logger only, and the shipped SkillEvalCallback
    entry updated with ``callback_args``."""
    cfg = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    for key in ("corpus", "tree", "attribution", "val_corpus"):
        cfg["data"][key] = str(REPO / cfg["data"][key])
    cfg["trainer"]["logger"] = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                 "init_args": {"save_dir": "runs/quickstart", "name": "logs", "version": ""}}]
    callbacks = [c for c in cfg["trainer"]["callbacks"] if "RichProgressBar" not in c["class_path"]]
    entry = next(c for c in callbacks if c["class_path"] == "callbacks.SkillEvalCallback")
    entry["init_args"].update(callback_args)
    cfg["trainer"]["callbacks"] = callbacks
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def fit(config: Path, model: Path, *extra: str):
    return train.main(["fit", "--config", str(config), f"--model.model={model}", f"--data.tokenizer={model}",
                       "--data.selection.strategy=random", "--data.selection.budget=16", "--data.profile=null",
                       "--trainer.precision=32-true", "--trainer.limit_val_batches=1",
                       "--trainer.enable_progress_bar=false", *extra])


def metric_rows(run: Path) -> list[dict]:
    with (run / "logs" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.vllm
@pytest.mark.slow
def test_callback_reports_each_evaluation_and_the_run_continues(tmp_path, monkeypatch, tiny_qwen3_dir, capsys):
    monkeypatch.chdir(tmp_path)
    config = quickstart_config(
        tmp_path, every_n_epochs=2, export_dtype=None, sampling={"temperature": 0.6, "max_new_tokens": 12},
        benchmarks=[{"name": "heldout", "limit_per_skill": 2, "k": 2}, {"name": "aime24", "limit": 2, "k": 1}])
    cli = fit(config, tiny_qwen3_dir, "--trainer.max_epochs=2")
    run = tmp_path / "runs" / "quickstart"
    assert cli.trainer.global_step == 4 and (run / "hf_export" / "final" / "config.json").is_file()  # ran to the end
    evals = run / "eval"
    # baseline before training; every_n_epochs=2 skips epoch 0; the last epoch is always evaluated
    # and one chart per set with skills of every evaluation so far
    assert sorted(p.name for p in evals.iterdir()) == ["baseline", "epoch=1", "history_heldout.png"]
    reports = {}
    for tag in ("baseline", "epoch=1"):
        assert {p.name for p in (evals / tag).iterdir()} == {"report.json", "report.md", "summary.png",
                                                           "skills_heldout.png"}
        reports[tag] = json.loads((evals / tag / "report.json").read_text())
    for tag, report in reports.items():
        assert report["tag"] == tag and report["world_size"] == 1
        heldout = report["benchmarks"]["heldout"]
        m = heldout["metrics"]
        assert m["problems"] == 28 and m["samples"] == 56 and m["k"] == 2  # 2 problems per leaf, 2 samples each
        assert sum(len(p["samples"]) for p in heldout["problems"]) == 56
        assert all(len(p["chains"]) == 1 for p in heldout["problems"])  # the run's attribution labels every problem
        rows = {r["chain"]: r for r in m["skills"]}
        leaves = [r for r in rows.values() if r["is_leaf"]]
        assert len(leaves) == 14 and sum(r["judged"] for r in leaves) == 28
        for topic in ("Arithmetic", "Number Theory", "Algebra", "Fractions and Percentages"):
            assert rows[topic]["judged"] == sum(r["judged"] for r in leaves if r["chain"].startswith(topic + "->"))
            assert rows[topic]["samples"] == 2 * rows[topic]["judged"]
        assert report["summary"]["aime24"]["problems"] == 2 and report["summary"]["aime24"]["samples"] == 2
        assert m["mean_tokens"] == 12.0 and m["truncation_rate"] == 1.0  # a random model never stops early
    assert reports["epoch=1"]["baseline"].endswith("baseline/report.json") and reports["baseline"]["baseline"] is None
    assert reports["epoch=1"]["global_step"] == 4 and reports["baseline"]["global_step"] == 0
    assert not (evals / "_export").exists()  # the evaluated export is removed
    logged = [r for r in metric_rows(run) if r.get("eval/heldout/acc")]
    assert [int(r["step"]) for r in logged] == [0, 4]
    assert all(r["eval/heldout/skill/Arithmetic/subtraction"] != "" and float(r["eval/time_s"]) > 0 for r in logged)
    # each evaluation says what it found and where its report went, on stdout (captured here: plain lines)
    shown = capsys.readouterr()
    for tag, report in reports.items():
        acc = report["summary"]["heldout"]["accuracy"]
        assert f"[skill evaluation {tag}] heldout: {100 * acc:.1f}% over 28 problems; weakest skill: " in shown.out
        prefix = f"[skill evaluation {tag}] report: "
        printed = [line[len(prefix):].rsplit(" (", 1)[0] for line in shown.out.splitlines() if line.startswith(prefix)]
        assert [Path(tmp_path, p).resolve() for p in printed] == [(evals / tag / "report.json").resolve()]
    assert "requests generated and graded" in shown.err  # the progress line of the evaluation's generation
    # the run's closing summary (also printed): the final evaluation's overall and weakest-skill accuracy
    finished = json.loads((run / "run_finished.json").read_text())["evaluations"]["heldout"]
    final = reports["epoch=1"]["benchmarks"]["heldout"]["metrics"]
    weakest = min((r for r in final["skills"] if r["accuracy"] is not None), key=lambda r: (r["accuracy"], r["chain"]))
    assert finished["tag"] == "epoch=1" and finished["accuracy"] == final["accuracy"]
    assert finished["weakest_skill"] == {"chain": weakest["chain"], "accuracy": weakest["accuracy"]}
    assert finished["report"] == str(Path("runs/quickstart/eval/epoch=1/report.json"))


@pytest.mark.vllm
@pytest.mark.slow
def test_engine_failure_raises_one_error_or_is_skipped(tmp_path, monkeypatch, tiny_qwen3_dir):
    monkeypatch.chdir(tmp_path)
    # a generation time limit no engine can meet: the child is killed, which is an engine failure
    args = dict(baseline=False, timeout_s=0.05, benchmarks=[{"name": "heldout", "limit": 2}])
    with pytest.raises(GenerationError) as e:
        fit(quickstart_config(tmp_path, **args), tiny_qwen3_dir, "--trainer.max_steps=1")
    message = str(e.value)
    assert "\n" not in message and "skill evaluation epoch=0 failed on rank 0" in message
    assert "exceeded" in message and "on_error: skip" in message

    monkeypatch.chdir(tmp_path / "runs")  # a fresh run directory
    cli = fit(quickstart_config(tmp_path, on_error="skip", **args), tiny_qwen3_dir, "--trainer.max_steps=1")
    run = tmp_path / "runs" / "runs" / "quickstart"
    assert cli.trainer.global_step == 1 and (run / "hf_export" / "final" / "config.json").is_file()
    assert not (run / "eval" / "epoch=0").exists()
    assert any(r.get("eval/failed") == "1.0" for r in metric_rows(run))


@pytest.mark.vllm
@pytest.mark.slow
def test_stop_signal_during_an_epoch_evaluation_reruns_it_after_resumption(tmp_path, monkeypatch, tiny_qwen3_dir):
    """SIGTERM while epoch 0's engine generates: the engine is killed, the epoch-end checkpoint records the evaluation
    as pending and the run exits 143; resumed, the run evaluates epoch 0 first (on the epoch-end weights), then
    trains and evaluates epoch 1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO / "tests" / "scripts"))  # faults.SignalDuringEpochEnd
    run = tmp_path / "runs" / "quickstart"
    ckpt = run / "checkpoints"  # inside the run directory, where --ckpt_path last looks

    def config(send_signal: bool) -> Path:
        path = quickstart_config(tmp_path, baseline=False, benchmarks=[{"name": "heldout", "limit": 2}])
        cfg = yaml.safe_load(path.read_text())
        first = [{"class_path": "callbacks.checkpointing.ResumableCheckpoint",
                  "init_args": {"every_n_train_steps": 100}},
                 {"class_path": "callbacks.preemption.PreemptionCallback"}]
        if send_signal:  # before SkillEvalCallback: its timer fires while the evaluation runs
            first.append({"class_path": "faults.SignalDuringEpochEnd",
                          "init_args": {"epoch": 0, "signum": int(signal.SIGTERM)}})
        mine = ("ModelCheckpoint", "ResumableCheckpoint", "PreemptionCallback")  # replaced by the ones above
        cfg["trainer"]["callbacks"] = first + [c for c in cfg["trainer"]["callbacks"]
                                               if not any(m in c["class_path"] for m in mine)]
        path.write_text(yaml.safe_dump(cfg))
        return path

    with pytest.raises(SystemExit) as e:
        fit(config(True), tiny_qwen3_dir, "--trainer.max_epochs=2")
    assert e.value.code == 143
    assert not (run / "eval" / "epoch=0").exists() and (ckpt / "last.ckpt").exists()
    steps_per_epoch = torch.load(ckpt / "last.ckpt", weights_only=False)["global_step"]
    assert steps_per_epoch == 2  # 16 examples, 8 per step: the checkpoint is the epoch's end, not a step later

    cli = fit(config(False), tiny_qwen3_dir, "--trainer.max_epochs=2", "--ckpt_path=last")
    first_eval = json.loads((run / "eval" / "epoch=0" / "report.json").read_text())
    final_eval = json.loads((run / "eval" / "epoch=1" / "report.json").read_text())
    assert first_eval["global_step"] == steps_per_epoch and final_eval["global_step"] == 2 * steps_per_epoch
    assert cli.trainer.global_step == 2 * steps_per_epoch
    assert sum(len(p["samples"]) for p in first_eval["benchmarks"]["heldout"]["problems"]) == 2


def test_timeout_check_and_core_split():
    callback = SkillEvalCallback(timeout_s=3600)
    short = SimpleNamespace(world_size=2, strategy=SimpleNamespace(_timeout=timedelta(minutes=30)))
    with pytest.raises(ConfigError) as e:
        callback.evaluation.check_trainer(short)
    assert "trainer.strategy.init_args.timeout" in str(e.value) and '"1:12:00"' in str(e.value)
    long = SimpleNamespace(world_size=2, strategy=SimpleNamespace(_timeout=timedelta(hours=2)))
    callback.evaluation.check_trainer(long)
    callback.evaluation.check_trainer(SimpleNamespace(world_size=1, strategy=None))  # one process: no collective waits
    assert [rank_cores(r, 2, [0, 1]) for r in range(2)] == [[0], [1]]
    assert [rank_cores(r, 3, list(range(8))) for r in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert rank_cores(0, 1, [0, 1]) == [0, 1] and rank_cores(3, 4, [0, 1]) == [1]
    with pytest.raises(ConfigError):
        SkillEvalCallback(backend=SimpleNamespace(tensor_parallel_size=0, kind="vllm"))

    # tensor parallel 2 over 4 ranks of one node: ranks 0 and 2 lead an engine each, bound to their group's cores
    from skill_distill.generation.vllm_backend import clean_child_env

    tp2 = SkillEvalCallback(backend=SimpleNamespace(tensor_parallel_size=2, kind="vllm"))
    assert [tp2.evaluation.engine_slot(SimpleNamespace(global_rank=r, world_size=4)) for r in range(4)] == [
        (0, 2, True), (0, 2, False), (1, 2, True), (1, 2, False)]
    env = clean_child_env({"RANK": "2", "PATH": "/bin"}, cpu_cores=[rank_cores(r, 4, list(range(8))) for r in (2, 3)])
    assert env == {"PATH": "/bin", "VLLM_CPU_OMP_THREADS_BIND": "4,5|6,7", "OMP_NUM_THREADS": "2"}
    with pytest.raises(ConfigError, match="must divide the devices per node"):
        tp2.setup(SimpleNamespace(world_size=3, num_devices=3, strategy=SimpleNamespace(_timeout=timedelta(hours=9))),
                  None, "fit")


@pytest.fixture(scope="module")
def one_rank_evaluation(tiny_qwen3_dir, shared_dir):  # shared_dir: aime24 is read from the data mirror
    """The two-rank runs' evaluation sets generated by one engine from the initial weights (which the two-rank
    baseline exports are checked to equal): computed once for both strategies."""
    spec = importlib.util.spec_from_file_location("eval_two_ranks", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from skill_distill.eval_sets import BenchmarkSpec, SkillSource
    from skill_distill.evaluation import compute_summaries, evaluate_model, load_benchmarks
    from skill_distill.generation.base import SamplingConfig
    from skill_distill.generation.factory import VLLMConfig

    heldout, aime = script.BENCHMARKS
    loaded = load_benchmarks([
        BenchmarkSpec(**heldout, path=str(QS / "heldout.jsonl"),
                      skills=SkillSource(attribution=str(QS / "attribution.jsonl"))),
        BenchmarkSpec(**aime)], str(QS / "tree.json"))
    records = evaluate_model(str(tiny_qwen3_dir), str(tiny_qwen3_dir), loaded, VLLMConfig(),
                             SamplingConfig(**script.SAMPLING))
    return records, compute_summaries(loaded, records), loaded


# ddp: one engine per rank; fsdp2 (the production strategy) with the two ranks sharing one tensor-parallel engine
@pytest.mark.vllm
@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("strategy,tp", [("ddp", 1), ("fsdp2", 2)], ids=["ddp", "fsdp2-tp2"])
def test_two_ranks_generate_disjoint_shares_equal_to_one_rank(strategy, tp, tmp_path, tiny_qwen3_dir,
                                                              one_rank_evaluation):
    port = launch.free_port()  # chosen by the OS, never a fixed number
    out = tmp_path / "two"
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(REPO), MASTER_PORT=str(port))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_qwen3_dir), "--out", str(out),
                           "--devices", "2", "--port", str(port), "--strategy", strategy, "--tp", str(tp)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # the generation children release their semaphores (vLLM's, tqdm's) before they leave through os._exit
    assert "leaked semaphore" not in proc.stderr, proc.stderr[-2000:]
    report = json.loads((out / "eval" / "baseline" / "report.json").read_text())
    assert report["world_size"] == 2 and (out / "eval" / "epoch=0" / "report.json").is_file()

    # the collective export (FSDP2: gathered from both ranks' shards) holds the full weights: before training they
    # are the initial model's, after the step they moved
    from safetensors.torch import load_file

    initial = load_file(tiny_qwen3_dir / "model.safetensors")
    baseline = load_file(out / "eval" / "baseline" / "model" / "model.safetensors")
    trained = load_file(out / "eval" / "epoch=0" / "model" / "model.safetensors")
    assert set(baseline) == set(trained) and set(baseline) <= set(initial)
    assert all(torch.equal(baseline[k], initial[k].to(baseline[k].dtype)) for k in baseline)
    assert any(not torch.equal(trained[k], baseline[k]) for k in baseline)
    samples = {(name, p["id"], s["sample"]): s for name, b in report["benchmarks"].items()
               for p in b["problems"] for s in p["samples"]}
    engines = [s["rank"] for s in samples.values()]  # the engine (= rank when tp is 1) that generated each sample
    if tp == 1:
        assert sorted(set(engines)) == [0, 1] and abs(engines.count(0) - engines.count(1)) <= 1
    else:
        assert set(engines) == {0}

    # the same sets on one rank, from the same (initial) weights
    records, summaries, loaded = one_rank_evaluation
    single = {(r["benchmark"], r["id"], r["sample"]): r for r in records}
    assert len(records) == len(single) == 14 * 2 + 2 * 3
    assert set(single) == set(samples)  # every (problem, sample) generated exactly once across the two ranks
    assert all(samples[key]["seed"] == r["seed"] for key, r in single.items())  # per-request seeds
    same = sum(samples[key]["text"] == r["text"] for key, r in single.items())
    if tp == 1:  # the split does not change a single completion, so the gathered metrics are the single-rank ones
        assert same == len(single)
        for name, s in summaries.items():
            assert report["benchmarks"][name]["metrics"] == json.loads(json.dumps(s))
    else:
        # Why the texts cannot all match: the tensor-parallel engine splits each layer's matmuls over two workers and
        # sums the partial products, in another order than one engine does; the random tiny model's logits are
        # near-uniform, so a last-bit difference flips a near-tie token now and then and the completion goes on
        # differently from there. What is compared instead: most completions equal the single engine's; every
        # equal completion got the single engine's verdict (grading is per text, wherever it ran); and the
        # report's metrics, gathered across the two ranks, equal the metrics of the same samples computed in one
        # process.
        from skill_distill.evaluation import compute_summaries

        assert same >= 0.75 * len(single), f"{same}/{len(single)} completions equal the single-engine ones"
        verdict = ("extracted", "correct", "timed_out", "num_tokens", "finished", "skills_written")
        for key, r in single.items():
            if samples[key]["text"] == r["text"]:
                assert {k: samples[key][k] for k in verdict} == {k: r[k] for k in verdict}, key
        gathered = [{**s, "benchmark": name, "index": index} for name, b in report["benchmarks"].items()
                    for index, p in enumerate(b["problems"]) for s in p["samples"]]
        for name, s in compute_summaries(loaded, gathered).items():
            assert report["benchmarks"][name]["metrics"] == json.loads(json.dumps(s)), name
            assert s["samples"] == summaries[name]["samples"]
