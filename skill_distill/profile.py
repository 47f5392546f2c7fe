"""Student profile (docs/METHOD.md §3): the student answers every pool problem, each answer is graded against the
pool's reference answer, and accuracy is aggregated per node of the skill tree.

Run: ``python -m skill_distill profile --config configs/pipeline/profile_quickstart.yaml``; several machines can
each take one shard (``shard_index``/``num_shards``; problem ``k`` of the pool goes to shard ``k % num_shards``),
then ``python -m skill_distill merge-profile --output_dir ... --num_shards N`` writes the profile.
``python -m skill_distill reaggregate-profile`` counts a finished run's verdicts under another tree or attribution
without generating anything (a verdict depends only on pool, student and sampling).

Outputs in ``output_dir``:

- ``verdicts.jsonl`` (``verdicts.shard-i-of-n.jsonl`` when sharded): one row per (problem, sample),
  ``{"id", "sample", "correct", "extracted", "num_tokens", "truncated"[, "text"]}`` (``text`` with
  ``keep_texts``), appended chunk by chunk. A rerun skips
  finished problems, drops a torn last line and redoes a problem whose samples were only partly written.
- ``profile_run.json`` (``profile_run.shard-i-of-n.json``): the run's settings; a rerun with different settings
  in the same directory is refused.
- ``profile.json`` (single shard, or after merging): settings, overall accuracy, truncation rate, examples without
  chains, and one row per tree node with judged problems: ``{"chain": "A->b", "depth", "is_leaf", "correct",
  "judged", "samples", "accuracy", "ci_low", "ci_high"[, "accuracy_shrunk"]}`` (root: ``"chain": ""``).

Sampling seeds are ``sampling.seed + k`` for pool problem ``k``, so shards (and resumed runs) reproduce a single run,
up to the backend's floating-point batch effects (see ``generation.vllm_backend``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from skill_distill.console import accuracy_text, progress, summary, weakest_text
from skill_distill.corpus import Example, load_corpus, seeded_sample
from skill_distill.formatting import DEFAULT_INSTRUCTION, render_prompt, user_message
from skill_distill.generation.base import SamplingConfig
from skill_distill.generation.factory import BackendConfig, OpenAIConfig, VLLMConfig, make_backend
from skill_distill.grading import GradingConfig
from skill_distill.io import ConfigError, DataError, JsonlAppender, read_json, write_json, write_jsonl
from skill_distill.profile_file import load_profile, read_profile_nodes  # noqa: F401 - also read through the stage module
from skill_distill.selection import profile_warning
from skill_distill.skill_stats import Attribution, SkillCounts, load_attribution
from skill_distill.skill_tree import SkillTree, parse_chain

PROFILE_FILE = "profile.json"
# settings that must agree between a resumed run (or the shards of one run) and the files already written
# (the input files by their content: a run moved to another checkout or data directory resumes, a changed file does
# not; their paths are recorded as given, never resolved, so shipped run files name no machine's directories)
_INPUTS = ("pool", "tree", "attribution")
_RUN_KEYS = ("fingerprints", "student", "tokenizer", "backend_kind", "sampling", "enable_thinking",
             "instruction", "num_shards", "limit", "on_unknown_skill", "answer_fallback")


def _suffix(shard_index: int, num_shards: int) -> str:
    return "" if num_shards == 1 else f".shard-{shard_index}-of-{num_shards}"


def verdicts_path(output_dir: str | os.PathLike, shard_index: int = 0, num_shards: int = 1) -> Path:
    return Path(output_dir) / f"verdicts{_suffix(shard_index, num_shards)}.jsonl"


def run_info_path(output_dir: str | os.PathLike, shard_index: int = 0, num_shards: int = 1) -> Path:
    return Path(output_dir) / f"profile_run{_suffix(shard_index, num_shards)}.json"


def reference_answers(answer: str) -> str | list[str]:
    """A pool answer as grader golds: a JSON list of strings (how ``load_corpus`` stores several equivalent
    answers) becomes a list; anything else (``"[0, 1]"`` included) stays one answer."""
    text = answer.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return answer
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
    return answer


def _progress(msg: str) -> None:
    progress("profile", msg)


def _load_inputs(pool: str, tree: str, attribution: str, on_unknown: str, limit: int | None
                 ) -> tuple[list[Example], SkillTree, Attribution]:
    skill_tree = SkillTree.load(tree)
    examples = seeded_sample(load_corpus(pool, require_trace=False), limit)  # attribute's limit takes the same
    for k, ex in enumerate(examples):
        if not ex.answer.strip():
            raise DataError(f"{pool}: row {k + 1} (id {ex.id!r}) has no reference answer; it cannot be graded. "
                            "Rebuild the pool with the answer filter on, or drop the row")
    chains = load_attribution(attribution, skill_tree, on_unknown=on_unknown)  # type: ignore[arg-type]
    return examples, skill_tree, chains


def _read_verdicts(path: Path, n: int, expected_ids: set[str] | None) -> tuple[dict[str, list[dict]], bool]:
    """Complete problems of a verdict file as ``{id: [row per sample]}``, and whether the file needs cleaning
    (a problem with missing or repeated samples, from an interrupted append)."""
    by_id: dict[str, dict[int, dict]] = {}
    needs_cleaning = False
    with JsonlAppender(path) as existing:  # drops a torn last line
        rows = existing.rows
    for line, row in enumerate(rows, start=1):
        if "id" not in row or "sample" not in row:
            raise DataError(f"{path}:{line}: not a verdict row (needs 'id' and 'sample'); delete the file to restart")
        ex_id, sample = str(row["id"]), int(row["sample"])
        if expected_ids is not None and ex_id not in expected_ids:
            raise DataError(f"{path}:{line}: id {ex_id!r} is not a problem of this pool shard; this file belongs to "
                            "another run, use another output_dir")
        if sample in by_id.setdefault(ex_id, {}):
            needs_cleaning = True
        by_id[ex_id][sample] = row
    complete = {}
    for ex_id, samples in by_id.items():
        if set(samples) == set(range(n)):
            complete[ex_id] = [samples[s] for s in range(n)]
        else:
            needs_cleaning = True
    return complete, needs_cleaning


def _fingerprints(info: dict) -> dict[str, str]:
    """sha256 of each input file named in ``info`` (pinned assets through their cached copy)."""
    from skill_distill.selection.manifest import fingerprint_file

    return {k: fingerprint_file(info[k]) for k in _INPUTS}


def _settings_diff(old: dict, new: dict) -> list[str]:
    """The settings (input files by name) on which two runs' settings records disagree."""
    if "fingerprints" not in old:  # written before inputs were fingerprinted: its paths were resolved ones
        old = {**old, "fingerprints": _fingerprints(old) if all(Path(old[k]).is_file() or str(old[k]).startswith(
            "asset:") for k in _INPUTS) else {}}
    diff = [k for k in _INPUTS if old["fingerprints"].get(k) != new["fingerprints"].get(k)]
    return diff + [k for k in _RUN_KEYS if k != "fingerprints" and old.get(k) != new.get(k)]


def _check_run_info(path: Path, info: dict) -> None:
    if path.exists():
        old = read_json(path, "profile run settings")
        diff = _settings_diff(old, info)
        if diff:
            raise DataError(f"{path}: this output_dir holds a profile run with different {', '.join(diff)}; "
                            "use a new output_dir or delete its files to restart")
    write_json(path, info)


def run_profile(
    pool: str,
    tree: str,
    attribution: str,
    output_dir: str,
    backend: BackendConfig = VLLMConfig(),
    sampling: SamplingConfig = SamplingConfig(temperature=0.6, top_p=1.0, max_new_tokens=8192, n=1, seed=42),
    enable_thinking: bool = True,
    instruction: str = DEFAULT_INSTRUCTION,
    shard_index: int = 0,
    num_shards: int = 1,
    chunk_size: int = 512,
    grading: GradingConfig = GradingConfig(),
    answer_fallback: Literal["none", "last_number"] = "none",
    shrinkage: float = 0.0,
    on_unknown_skill: Literal["error", "drop"] = "error",
    limit: int | None = None,
    keep_texts: bool = False,
) -> dict:
    """Grade the student on every pool problem of this shard and write per-skill accuracies.

    Args:
        pool: Canonical pool JSONL (``{"id","problem","trace","answer","pass_rate"}``; the trace is not used).
        tree: Skill tree JSON.
        attribution: Attribution JSONL of the pool (``{"id", "chains"}``); pool problems without a row count
            as examples without chains (judged under the root only).
        output_dir: Where verdicts, run settings and ``profile.json`` go.
        backend: The student and how to run it: ``VLLMConfig`` (the default kind), ``HFConfig``, or ``OpenAIConfig``
            for a served model; a YAML picks the kind by ``class_path``, ``--backend.model`` sets the student.
        sampling: Student sampling (docs/METHOD.md §3: temperature 0.6, top-p 1.0, 8,192 new tokens, one sample;
            with ``n > 1`` a problem contributes its mean correctness). Problem ``k`` uses seed ``seed + k``.
        enable_thinking: Passed to chat templates that know it (Qwen3 thinking mode).
        instruction: The instruction line of the user turn.
        shard_index: Which shard this process answers (problem ``k`` belongs to shard ``k % num_shards``).
        num_shards: Number of shards; with more than one, run ``merge-profile`` once all are done.
        chunk_size: Problems per generate call; verdicts are saved after each chunk.
        grading: Grading processes, the per-answer time limit (a timeout counts as wrong), and the level and
            bootstrap resamples of the per-skill intervals.
        answer_fallback: ``none``: an answer without ``\\boxed{}`` is wrong (the paper); ``last_number``: a finished
            (not truncated) answer without a box is graded by its last number (small students that answer in
            prose, e.g. the quickstart's SmolLM2-135M).
        shrinkage: Pseudo-count strength pulling each node's accuracy toward its parent's (0: the paper's raw
            accuracies; > 0 adds ``accuracy_shrunk``).
        on_unknown_skill: ``error``: a chain not in the tree stops the run; ``drop``: such chains are ignored.
        limit: A seeded sample of ``limit`` pool problems (smoke runs; ``corpus.seeded_sample``, the same problems
            as the attribute stage's ``limit``).
        keep_texts: Also store each completion's text in its verdict row (``"text"``), to inspect what was graded.

    Returns:
        A summary: problems answered in this run, totals, and the profile path (single shard).

    Raises:
        DataError: bad inputs, a shard index out of range, or an output_dir holding a different run.
        GenerationError: the student backend failed.
    """
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise DataError(f"shard_index must be in [0, num_shards) and num_shards >= 1; "
                        f"got {shard_index} of {num_shards}")
    if isinstance(backend, OpenAIConfig) and not backend.tokenizer:
        raise ConfigError("backend is an OpenAIConfig: set backend.tokenizer (a local path) to render the student's "
                          "prompts")
    examples, skill_tree, chains = _load_inputs(pool, tree, attribution, on_unknown_skill, limit)
    index = {ex.id: k for k, ex in enumerate(examples)}
    shard = [ex for k, ex in enumerate(examples) if k % num_shards == shard_index]
    out_dir = Path(output_dir)
    info = _run_info(pool, tree, attribution, backend, sampling, enable_thinking, instruction, num_shards, limit)
    info.update(on_unknown_skill=on_unknown_skill, answer_fallback=answer_fallback, shard_index=shard_index)
    _check_run_info(run_info_path(out_dir, shard_index, num_shards), info)

    path = verdicts_path(out_dir, shard_index, num_shards)
    done, needs_cleaning = _read_verdicts(path, sampling.n, {ex.id for ex in shard}) if path.exists() else ({}, False)
    if needs_cleaning:  # keep whole problems only; the partly written ones are redone
        write_jsonl(path, [row for ex in shard if ex.id in done for row in done[ex.id]])
    todo = [ex for ex in shard if ex.id not in done]
    _progress(f"shard {shard_index}/{num_shards}: {len(shard)} problems, {len(done)} already graded, {len(todo)} to go")

    if todo:
        _answer_and_grade(todo, index, path, backend, sampling, enable_thinking, instruction, chunk_size, grading,
                          answer_fallback, keep_texts)
    result = {"shard_index": shard_index, "num_shards": num_shards, "problems": len(shard),
              "answered_this_run": len(todo), "verdicts": str(path)}
    if num_shards == 1:
        verdicts, _ = _read_verdicts(path, sampling.n, {ex.id for ex in shard})
        profile = build_profile(info, examples, skill_tree, chains, verdicts, shrinkage, grading.confidence,
                                grading.bootstrap_resamples)
        write_json(out_dir / PROFILE_FILE, profile)
        result.update(profile=str(out_dir / PROFILE_FILE), overall_accuracy=profile["overall_accuracy"])
        summary("profile", [f"{len(shard)} problems ({len(todo)} answered this run), overall accuracy "
                            f"{accuracy_text(profile['overall_accuracy'])}", weakest_text(profile["nodes"]),
                            f"profile: {out_dir / PROFILE_FILE}", f"verdicts: {path}",
                            *(f"warning: {w}" for w in [extraction_warning(answer_fallback)] if w)])
        _warn_if_degenerate(profile)
    else:
        summary("profile", [f"shard {shard_index} of {num_shards}: {len(shard)} problems ({len(todo)} answered this "
                            f"run)", f"verdicts: {path}",
                            f"when every shard is done: python -m skill_distill merge-profile --output_dir {out_dir} "
                            f"--num_shards {num_shards}"])
    return result


def _run_info(pool, tree, attribution, backend: BackendConfig, sampling: SamplingConfig, enable_thinking: bool,
              instruction: str, num_shards: int, limit: int | None) -> dict:
    inputs = {"pool": str(pool), "tree": str(tree), "attribution": str(attribution)}
    return {**inputs, "fingerprints": _fingerprints(inputs), "student": backend.model,
            "tokenizer": backend.tokenizer or backend.model, "backend_kind": backend.kind,
            "backend": {"kind": backend.kind, **asdict(backend)}, "sampling": asdict(sampling),
            "enable_thinking": enable_thinking, "instruction": instruction, "num_shards": num_shards, "limit": limit}


def _answer_and_grade(todo: list[Example], index: dict[str, int], path: Path, backend_cfg: BackendConfig,
                      sampling: SamplingConfig, enable_thinking: bool, instruction: str, chunk_size: int,
                      grading: GradingConfig, answer_fallback: str, keep_texts: bool) -> None:
    from skill_distill.assets import load_tokenizer
    from skill_distill.grading import Grader

    tokenizer = load_tokenizer(backend_cfg.tokenizer or backend_cfg.model,
                               "backend.tokenizer" if backend_cfg.tokenizer else "backend.model")
    chunk_size = max(1, chunk_size)
    grader = Grader(workers=grading.workers, timeout_s=grading.timeout_s, fallback=answer_fallback)
    with grader, make_backend(backend_cfg) as student, JsonlAppender(path) as out:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start: start + chunk_size]
            prompts = [render_prompt(tokenizer, user_message(ex.problem, instruction), enable_thinking) for ex in chunk]
            completions = student.generate(prompts, sampling, seeds=[sampling.seed + index[ex.id] for ex in chunk])
            flat = [(ex, j, c) for ex, comps in zip(chunk, completions, strict=True) for j, c in enumerate(comps)]
            verdicts = grader.grade([c.text for _, _, c in flat], [reference_answers(ex.answer) for ex, _, _ in flat],
                                    allow_fallback=[c.finished for _, _, c in flat])
            out.append({"id": ex.id, "sample": j, "correct": v.correct, "extracted": v.extracted,
                        "num_tokens": c.num_tokens, "truncated": not c.finished,
                        **({"text": c.text} if keep_texts else {})}
                       for (ex, j, c), v in zip(flat, verdicts, strict=True))
            right = sum(v.correct for v in verdicts)
            _progress(f"{min(start + chunk_size, len(todo))}/{len(todo)} problems; this chunk {right}/{len(verdicts)} "
                      f"correct, {grader.timeouts} grading timeouts so far")


def build_profile(info: dict, examples: Sequence[Example], tree: SkillTree, chains: Attribution,
                  verdicts: dict[str, list[dict]], shrinkage: float = 0.0, confidence: float = 0.95,
                  resamples: int = 1000, seed: int = 0) -> dict:
    """The ``profile.json`` object from complete verdicts (``{id: [row per sample]}``) of every pool problem."""
    counts = SkillCounts()
    samples = truncated = no_box = tokens = 0
    without_chains = 0
    for ex in examples:
        rows = verdicts[ex.id]
        ex_chains = chains.get(ex.id, [])
        without_chains += not ex_chains
        counts.add(ex.id, ex_chains, [bool(r["correct"]) for r in rows])
        samples += len(rows)
        truncated += sum(bool(r.get("truncated")) for r in rows)
        no_box += sum(r.get("extracted") is None for r in rows)
        tokens += sum(int(r.get("num_tokens") or 0) for r in rows)
    nodes = counts.rows(tree, confidence=confidence, shrinkage=shrinkage, resamples=resamples, seed=seed)
    settings = {k: v for k, v in info.items() if k != "shard_index"}
    return {
        **settings,
        "tree_name": tree.name,
        "examples": len(examples),
        "examples_without_chains": without_chains,
        "attribution_rows": chains.rows,
        "attribution_dropped_chains": chains.dropped_chains,
        "samples": samples,
        "overall_accuracy": counts.accuracy(()) if examples else None,
        "truncation_rate": truncated / samples if samples else None,
        "no_box_rate": no_box / samples if samples else None,
        "mean_num_tokens": tokens / samples if samples else None,
        "shrinkage": shrinkage,
        "confidence": confidence,
        "interval": "wilson" if all(len(v) == 1 for v in verdicts.values()) else f"bootstrap({resamples})",
        "nodes": nodes,
    }


def merge_profile_shards(output_dir: str, num_shards: int, shrinkage: float = 0.0) -> dict:
    """Check that every shard answered exactly its problems, then write ``profile.json`` from all shards.

    Args:
        output_dir: The directory every shard wrote to.
        num_shards: The number of shards of the run.
        shrinkage: As in ``run_profile``.

    Raises:
        DataError: a shard's settings file or verdicts are missing, the shards disagree on settings, or ids are
            missing or duplicated (named in the message).
    """
    out_dir = Path(output_dir)
    info = _shards_info(out_dir, num_shards)
    examples, skill_tree, chains = _load_inputs(info["pool"], info["tree"], info["attribution"],
                                                info.get("on_unknown_skill", "error"), info["limit"])
    verdicts = _collect_verdicts(out_dir, num_shards, int(info["sampling"]["n"]), examples)
    profile = build_profile(info, examples, skill_tree, chains, verdicts, shrinkage)
    write_json(out_dir / PROFILE_FILE, profile)
    summary("merge-profile", [f"merged {num_shards} shards ({len(examples)} problems), overall accuracy "
                              f"{accuracy_text(profile['overall_accuracy'])}", weakest_text(profile["nodes"]),
                              f"profile: {out_dir / PROFILE_FILE}"])
    _warn_if_degenerate(profile)
    return {"profile": str(out_dir / PROFILE_FILE), "examples": len(examples),
            "overall_accuracy": profile["overall_accuracy"]}


def reaggregate_profile(verdicts_dir: str, tree: str, attribution: str, output_dir: str, shrinkage: float = 0.0,
                        on_unknown_skill: Literal["error", "drop"] = "error") -> dict:
    """A profile under another tree or attribution from a finished profile run's verdicts, with no generation.

    A verdict depends only on the pool, the student and the sampling, so trying a second tree (or a second
    attribution of the same pool) needs no new answers: this re-counts the same verdicts per node of ``tree``.
    ``python -m skill_distill reaggregate-profile --verdicts_dir data/quickstart/profile --tree T --attribution A
    --output_dir D``.

    Args:
        verdicts_dir: The ``output_dir`` of a finished ``profile`` run (single or all shards done): its settings
            file names the pool, whose content must be unchanged.
        tree: Skill tree JSON to count under.
        attribution: Attribution JSONL of the same pool on ``tree``.
        output_dir: Where ``profile.json`` goes; not ``verdicts_dir`` (its own profile stays as it is).
        shrinkage: As in ``run_profile``.
        on_unknown_skill: As in ``run_profile``.

    Raises:
        DataError: an unfinished or missing run, a changed pool, ``output_dir`` equal to ``verdicts_dir``, or bad
            tree/attribution rows.
    """
    run_dir, out_dir = Path(verdicts_dir), Path(output_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise DataError(f"output_dir {out_dir} is the verdicts' run directory, whose profile.json belongs to its own "
                        "tree; choose another output_dir")
    runs = sorted(run_dir.glob("profile_run*.json"))
    if not runs:
        raise DataError(f"{run_dir}: no profile_run.json here; point verdicts_dir at a profile stage's output_dir")
    num_shards = int(read_json(runs[0], "profile run settings")["num_shards"])
    info = _shards_info(run_dir, num_shards)
    examples, skill_tree, chains = _load_inputs(info["pool"], tree, attribution, on_unknown_skill, info["limit"])
    verdicts = _collect_verdicts(run_dir, num_shards, int(info["sampling"]["n"]), examples)
    new_info = {**info, "tree": str(tree), "attribution": str(attribution), "on_unknown_skill": on_unknown_skill,
                "verdicts_from": str(run_dir)}
    new_info["fingerprints"] = _fingerprints(new_info)
    profile = build_profile(new_info, examples, skill_tree, chains, verdicts, shrinkage)
    write_json(out_dir / PROFILE_FILE, profile)
    summary("reaggregate-profile", [f"{len(examples)} problems' verdicts from {run_dir} counted under "
                                    f"{skill_tree.name!r}, overall accuracy "
                                    f"{accuracy_text(profile['overall_accuracy'])}", weakest_text(profile["nodes"]),
                                    f"profile: {out_dir / PROFILE_FILE}"])
    _warn_if_degenerate(profile)
    return {"profile": str(out_dir / PROFILE_FILE), "examples": len(examples),
            "overall_accuracy": profile["overall_accuracy"]}


def _shards_info(out_dir: Path, num_shards: int) -> dict:
    """The settings every shard of the run in ``out_dir`` ran with (they must agree), its pool unchanged since."""
    infos = []
    for i in range(num_shards):
        p = run_info_path(out_dir, i, num_shards)
        if not p.exists():
            raise DataError(f"{p} not found: shard {i} of {num_shards} has not run (run_profile with shard_index={i})")
        infos.append(read_json(p, "profile run settings"))
    for i, other in enumerate(infos[1:], start=1):
        diff = _settings_diff(infos[0], other)
        if diff:
            raise DataError(f"{run_info_path(out_dir, i, num_shards)}: shard {i} ran with different {', '.join(diff)} "
                            "than shard 0; rerun it with the same settings")
    info = infos[0]
    changed = [k for k, digest in info.get("fingerprints", {}).items() if _fingerprints(info)[k] != digest]
    if changed:
        raise DataError(f"{run_info_path(out_dir, 0, num_shards)}: {', '.join(changed)} changed since the shards ran "
                        f"({', '.join(str(info[k]) for k in changed)}); restore it or rerun every shard")
    return info


def _collect_verdicts(out_dir: Path, num_shards: int, n: int, examples: Sequence[Example]) -> dict[str, list[dict]]:
    """Every shard's complete verdicts; each shard must have graded exactly its problems, once."""
    verdicts: dict[str, list[dict]] = {}
    owner: dict[str, int] = {}
    for i in range(num_shards):
        path = verdicts_path(out_dir, i, num_shards)
        if not path.exists():
            raise DataError(f"{path} not found: shard {i} of {num_shards} has not written verdicts")
        shard_rows, _ = _read_verdicts(path, n, None)
        dup = sorted(set(shard_rows) & set(verdicts))
        if dup:
            raise DataError(f"{path}: ids already graded by shard {owner[dup[0]]}: {', '.join(dup[:5])}"
                            f"{' ...' if len(dup) > 5 else ''}; each problem must be graded by one shard")
        expected = {ex.id for k, ex in enumerate(examples) if k % num_shards == i}
        missing = sorted(expected - set(shard_rows))
        if missing:
            raise DataError(f"{path}: {len(missing)} problems of shard {i} have no complete verdicts "
                            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); "
                            f"rerun shard {i} to finish")
        foreign = sorted(set(shard_rows) - expected)
        if foreign:
            raise DataError(f"{path}: ids that belong to another shard or are not in the pool: "
                            f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}")
        verdicts.update(shard_rows)
        owner.update({k: i for k in shard_rows})
    return verdicts


def extraction_warning(answer_fallback: str) -> str | None:
    """The warning when the profile extracts answers unlike the evaluate stage (which grades ``\\boxed{}`` only)."""
    if answer_fallback == "none":
        return None
    return (f"the profile grades an unboxed answer by its {answer_fallback.replace('_', ' ')} (answer_fallback: "
            f"{answer_fallback}) but evaluate grades \\boxed{{}} answers only, so the profile and the held-out "
            "accuracy measure different things; set answer_fallback: none to profile as evaluation grades")


def _warn_if_degenerate(profile: dict) -> str | None:
    """Print the one-line degeneracy warning (docs/METHOD.md §4) of the paper's weights over this profile's
    leaves (``w_max`` 1000, T 1); the selection stages repeat it with their own settings. Returns the line."""
    leaves = {parse_chain(n["chain"]): float(n["accuracy"]) for n in profile["nodes"] if n.get("is_leaf")}
    warning = profile_warning(leaves)
    if warning:
        _progress(f"warning: {warning}")
    return warning
