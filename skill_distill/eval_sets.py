"""Evaluation sets: a declarative spec per benchmark, a registry of the paper's sets, and one loader.

A ``BenchmarkSpec`` says where the rows are (a local JSONL/JSON/Parquet file or an HF dataset name), which field
holds the problem, how the reference answer is read (a field, a list of equivalent answers, the text after ``####``
or the last ``\\boxed{}`` of a solution field), which rows to keep, how many samples to draw per problem (avg@k)
and where the per-problem skill chains come from. A new benchmark in a new format is a config entry, not code.

Registered sets (docs/METHOD.md §7), each read from its pinned public file (``asset:bench/<file>``, see
``skill_distill.assets.DATA_ASSETS``: a ``$SKILL_DISTILL_DATA`` mirror, the cache, or a verified download):

========== ============================ ====================================================== ===
name       file                         rows kept                                              k
========== ============================ ====================================================== ===
aime24     asset:bench/aime24           all (30)                                               8
aime25     asset:bench/aime25           all (30)                                               8
amc23      asset:bench/amc23            all (40)                                               8
math500    asset:bench/math500          all (500), ``subject`` field for per-skill analysis     1
math-l5    asset:bench/math500          ``level == 5`` (134)                                   8
olympiad…  asset:bench/olympiadbench    text-only, ``is_multiple_answer == false`` (581)       1
========== ============================ ====================================================== ===

A spec that names a registered set and sets ``hf_name`` (or its own ``path``) reads that source instead of the
pinned file and keeps the registered filters and k (a hub copy of the same set).
``PAPER_SUITE`` is the five benchmarks the paper averages over (all of the above but math500).

In a config a benchmark is either a registered name (``aime24``) or a spec; a spec whose ``name`` is registered
starts from the registered one and overrides the fields it sets (fields left ``null`` keep the registered value).
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from skill_distill.io import DataError
from skill_distill.skill_tree import Chain, SkillTree

AnswerRule = Literal["field", "list", "after_hashes", "last_boxed"]

HELDOUT = "heldout"
"""Reserved name: the training run's held-out slice (``data.val_corpus``), resolved by ``SkillEvalCallback``."""

_IMAGE_MARKERS = re.compile(r"!\[[^\]]*\]\(|<img\b|<image[\s_>\d]|\bimage_\d+\b", re.IGNORECASE)


@dataclass
class SkillSource:
    """Where a benchmark's per-problem skill chains come from: an attribution file or a native label field."""

    attribution: str | None = None
    """Attribution JSONL in the corpus format ``{"id", "chains": [[node, ..., leaf], ...]}`` keyed by the
    benchmark's problem ids (problems absent from it count only in the overall accuracy)."""
    label_field: str | None = None
    """A label field of the benchmark rows (MATH-500 ``subject``, OlympiadBench ``subfield``), mapped onto the
    tree with ``label_map``."""
    label_map: dict[str, Any] | None = None
    """Label value -> chain (``"Topic->leaf"`` or a list of names). All leaves: leaf-level skills; all nodes of
    one depth (e.g. topics): the tree is cut at that depth and skills are reported at that level."""
    on_unknown: Literal["error", "drop"] = "error"
    """A chain or label missing from the tree: error (one line naming file and row) or drop it (counted)."""


@dataclass
class BenchmarkSpec:
    """One evaluation set. ``None`` fields take the registered benchmark's value (when ``name`` is registered),
    else the default given in each field's description."""

    name: str
    """Set name, used in metric names (``eval/<name>/acc``) and report files."""
    path: str | None = None
    """Local file (.jsonl, .json array, .parquet) or a pinned data asset (``asset:bench/aime24``): a relative path
    is taken as given if it exists, else under ``data_root``."""
    hf_name: str | None = None
    """HF dataset name instead of ``path`` (``datasets.load_dataset(hf_name, hf_config, split=split)``)."""
    hf_config: str | None = None
    split: str | None = None
    """HF split (default ``test``)."""
    id_field: str | None = None
    """Problem id field (default: ``id`` when every row has one, else the row number ``"0"``, ``"1"``, ...)."""
    problem_field: str | None = None
    """Field with the problem statement (default ``problem``)."""
    context_field: str | None = None
    """Optional field whose text (when present and not "None") is put before the problem (OlympiadBench ``context``)."""
    answer_field: str | None = None
    """Field the reference answer is read from (default ``answer``)."""
    answer_rule: AnswerRule | None = None
    """field: the field's value is the answer (numbers such as 27.0 become "27"); list: a list of equivalent
    answers (a JSON/Python list or a string holding one); after_hashes: the text after the last ``####`` of the
    field (GSM8K style); last_boxed: the content of the field's last ``\\boxed{}`` (a worked solution).
    Default: field."""
    where: dict[str, Any] | None = None
    """Keep only rows whose fields equal these values, e.g. ``{level: 5}`` or ``{is_multiple_answer: false}``."""
    text_only: bool | None = None
    """Drop rows with an image (an image reference in the problem/context text or a non-empty ``image*`` field)."""
    k: int | None = None
    """Samples per problem; the set's score is the mean accuracy over them (avg@k). Default 1."""
    limit: int | None = None
    """Keep only the first ``limit`` problems (after filtering)."""
    limit_per_skill: int | None = None
    """Keep at most this many problems per skill (a problem counts under its first chain's last node), in file
    order, before ``limit``: a balanced small set for quick per-skill checks."""
    skills: SkillSource | None = None
    """Per-problem skill chains (None: overall accuracy only)."""


_GENERIC = {"split": "test", "problem_field": "problem", "answer_field": "answer", "answer_rule": "field",
            "text_only": False, "k": 1}

REGISTRY: dict[str, BenchmarkSpec] = {
    "aime24": BenchmarkSpec("aime24", path="asset:bench/aime24", k=8),
    "aime25": BenchmarkSpec("aime25", path="asset:bench/aime25", k=8),
    "amc23": BenchmarkSpec("amc23", path="asset:bench/amc23", k=8),
    "math500": BenchmarkSpec("math500", path="asset:bench/math500", id_field="unique_id", k=1),
    "math-l5": BenchmarkSpec("math-l5", path="asset:bench/math500", id_field="unique_id", where={"level": 5}, k=8),
    "olympiadbench": BenchmarkSpec("olympiadbench", path="asset:bench/olympiadbench", problem_field="question",
                                   context_field="context", answer_field="final_answer", answer_rule="list",
                                   where={"is_multiple_answer": False}, text_only=True, k=1),
}
PAPER_SUITE = ["aime24", "aime25", "amc23", "math-l5", "olympiadbench"]
"""The five benchmarks whose mean the paper reports (docs/METHOD.md §7)."""

@dataclass
class Problem:
    id: str
    problem: str
    answers: list[str]
    """Equivalent reference answers (any match is correct)."""
    index: int
    """Position in the loaded set (0-based, after filtering)."""


@dataclass
class LoadedBenchmark:
    spec: BenchmarkSpec
    """The resolved spec (registered values and defaults filled in)."""
    source: str
    problems: list[Problem]
    chains: dict[str, list[Chain]] = field(default_factory=dict)
    """Problem id -> skill chains (of ``tree``); problems without chains are absent."""
    tree: SkillTree | None = None
    """The tree the chains belong to (the evaluation tree, or its cut when labels are topic-level)."""
    skill_level: str | None = None
    """leaf, topic or depth-<d> when the set has skills, else None."""
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def k(self) -> int:
        return int(self.spec.k or 1)


# ---- resolving specs ---------------------------------------------------------------------------------------
def data_root(root: str | os.PathLike | None = None) -> Path | None:
    """The folder relative benchmark paths are also looked up under (None: only the working directory)."""
    return Path(root) if root else None


def resolve_spec(item: str | BenchmarkSpec | dict) -> BenchmarkSpec:
    """A registered name, a spec or a spec dict -> a full spec (registered values, then generic defaults).

    Raises DataError for an unknown name without a ``path``/``hf_name``, or both of them set.
    """
    if isinstance(item, dict):
        try:
            item = BenchmarkSpec(**{**item, "skills": SkillSource(**item["skills"])
                                    if isinstance(item.get("skills"), dict)
                                    else item.get("skills")})
        except TypeError as e:
            raise DataError(f"benchmark entry {item!r}: {e}; see BenchmarkSpec for the fields") from None
    if isinstance(item, str):
        if item not in REGISTRY and item != HELDOUT:
            raise DataError(f"unknown benchmark {item!r}; registered: {', '.join(REGISTRY)} (or give a spec with "
                            "a path or hf_name)")
        item = BenchmarkSpec(item)
    base = REGISTRY.get(item.name)
    # a spec giving its own source (a hub copy or another file) does not inherit the registered one
    own_source = item.path is not None or item.hf_name is not None
    merged = {}
    for f in fields(BenchmarkSpec):
        value = getattr(item, f.name)
        if value is None and base is not None and not (own_source and f.name in ("path", "hf_name")):
            value = getattr(base, f.name)
        if value is None:
            value = _GENERIC.get(f.name)
        merged[f.name] = value
    spec = BenchmarkSpec(**merged)
    if spec.name == HELDOUT and not (spec.path or spec.hf_name):
        return spec  # the training run fills in its held-out corpus
    if not spec.path and not spec.hf_name:
        raise DataError(f"unknown benchmark {spec.name!r}; registered: {', '.join(REGISTRY)} (or set path or hf_name "
                        "for a new one)")
    if spec.path and spec.hf_name:
        raise DataError(f"benchmark {spec.name!r}: set either path or hf_name, not both")
    if spec.k is not None and spec.k < 1:
        raise DataError(f"benchmark {spec.name!r}: k must be >= 1, got {spec.k}")
    return spec


def resolve_specs(items: Sequence[str | BenchmarkSpec | dict]) -> list[BenchmarkSpec]:
    """Resolve every entry; raises DataError for unknown names and repeated set names."""
    specs = [resolve_spec(i) for i in items]
    seen: set[str] = set()
    for s in specs:
        if s.name in seen:
            raise DataError(f"benchmark {s.name!r} is listed twice; give each evaluation set a distinct name")
        seen.add(s.name)
    return specs


# ---- reading -------------------------------------------------------------------------------------------------
def _read_rows(spec: BenchmarkSpec, root: Path | None) -> tuple[list[dict], str]:
    """The set's rows through the project's one row reader (``skill_distill.rows``)."""
    from skill_distill.rows import read_rows

    if spec.hf_name:
        try:
            return read_rows(spec.hf_name, spec.split, hf_config=spec.hf_config)
        except DataError as e:
            raise DataError(f"benchmark {spec.name!r}: {e}") from None
    from skill_distill.assets import resolve

    p = Path(resolve(spec.path))  # a pinned asset -> its verified local copy
    if not p.is_file() and not p.is_absolute() and root is not None and (root / p).is_file():
        p = root / p
    if not p.is_file():
        looked = f" (also looked under data root {root})" if root is not None else ""
        raise DataError(f"benchmark {spec.name!r}: file not found: {spec.path}{looked}; set the benchmark's path "
                        "(relative to the working directory or data_root) or use a registered set")
    if p.suffix.lower() not in {".jsonl", ".json", ".parquet"}:
        raise DataError(f"{p}: unsupported benchmark file type {p.suffix.lower()!r}; use .jsonl, .json or .parquet")
    return read_rows(p)


def _as_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # AMC23 stores 27.0 for 27
    return str(value).strip()


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in {"", "None"})


def _after_hashes(text: str) -> str | None:
    if "####" not in text:
        return None
    answer = text.rsplit("####", 1)[1].strip()
    return answer.replace(",", "") if re.fullmatch(r"-?[\d,]+(\.\d+)?", answer) else answer or None


def extract_answers(value: Any, rule: AnswerRule) -> list[str] | None:
    """The reference answers a field value holds under ``rule``; None when the rule finds none."""
    if _is_missing(value):
        return None
    if rule == "field":
        return [_as_text(value)]
    if rule == "list":
        if isinstance(value, str):
            text = value.strip()
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                try:
                    value = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    value = [text]  # a single answer stored as plain text
        values = value if isinstance(value, (list, tuple)) else [value]
        out = [_as_text(v) for v in values if not _is_missing(v)]
        return out or None
    if rule == "after_hashes":
        answer = _after_hashes(str(value))
        return [answer] if answer else None
    if rule == "last_boxed":
        from skill_distill.grading import extract_last_boxed

        answer = extract_last_boxed(str(value))
        return [answer] if answer else None
    raise DataError(f"unknown answer_rule {rule!r}; use field, list, after_hashes or last_boxed")


def _has_image(row: dict, text_fields: Sequence[str]) -> bool:
    for key in text_fields:
        if key and isinstance(row.get(key), str) and _IMAGE_MARKERS.search(row[key]):
            return True
    return any(k.lower().startswith("image") and not _is_missing(v) for k, v in row.items())


def _keep(row: dict, spec: BenchmarkSpec) -> bool:
    for key, want in (spec.where or {}).items():
        have = row.get(key)
        if isinstance(want, bool) and isinstance(have, str):
            have = {"true": True, "false": False}.get(have.strip().lower(), have)
        elif isinstance(want, (int, float)) and not isinstance(want, bool) and isinstance(have, str):
            try:
                have = type(want)(have)
            except ValueError:
                pass
        if have != want:
            return False
    return not (spec.text_only and _has_image(row, (spec.problem_field, spec.context_field)))


def load_benchmark(spec: str | BenchmarkSpec, root: str | os.PathLike | None = None,
                   tree: SkillTree | None = None) -> LoadedBenchmark:
    """Read, filter and map one benchmark; attach skill chains when the spec has a skills source.

    Raises DataError (one line: set, file, row, field, fix) for a missing file, a missing problem/answer/id field,
    a duplicate id, an empty result, skills without a tree, and chains or labels missing from the tree.
    """
    spec = resolve_spec(spec)
    if spec.name == HELDOUT and not (spec.path or spec.hf_name):
        raise DataError("benchmark 'heldout' is the training run's held-out slice: use it in SkillEvalCallback (with "
                        "data.val_corpus set), or give it a path")
    rows, source = _read_rows(spec, data_root(root))
    if not rows:
        raise DataError(f"{source}: benchmark {spec.name!r} has no rows")
    id_field = spec.id_field
    if id_field is None and all("id" in r for r in rows):
        id_field = "id"
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    raw_by_id: dict[str, dict] = {}
    for i, row in enumerate(rows):
        where = f"{source}: row {i + 1}"
        if spec.problem_field not in row or _is_missing(row[spec.problem_field]):
            raise DataError(f"{where}: missing problem field {spec.problem_field!r} (benchmark {spec.name!r}); set "
                            f"problem_field to one of {sorted(row)[:10]}")
        if spec.answer_field not in row:
            raise DataError(f"{where}: missing answer field {spec.answer_field!r} (benchmark {spec.name!r}); set "
                            f"answer_field to one of {sorted(row)[:10]}")
        if id_field is not None and id_field not in row:
            raise DataError(f"{where}: missing id field {id_field!r} (benchmark {spec.name!r}); set id_field, or leave "
                            "it unset to number the rows")
        if not _keep(row, spec):
            continue
        ex_id = str(row[id_field]) if id_field is not None else str(i)
        if ex_id in seen:
            raise DataError(f"{where}: duplicate id {ex_id!r} (first at row {seen[ex_id] + 1}) in benchmark "
                            f"{spec.name!r}; set id_field to a unique field")
        seen[ex_id] = i
        answers = extract_answers(row[spec.answer_field], spec.answer_rule)
        if not answers:
            raise DataError(f"{where}: no reference answer in field {spec.answer_field!r} with answer_rule "
                            f"{spec.answer_rule!r} (benchmark {spec.name!r}); fix the row or the rule")
        text = str(row[spec.problem_field]).strip()
        if spec.context_field and not _is_missing(row.get(spec.context_field)):
            text = f"{str(row[spec.context_field]).strip()}\n\n{text}"
        problems.append(Problem(ex_id, text, answers, len(problems)))
        raw_by_id[ex_id] = row
    if not problems:
        raise DataError(f"{source}: no rows of benchmark {spec.name!r} pass its filter (where={spec.where}, "
                        f"text_only={spec.text_only})")
    loaded = LoadedBenchmark(spec, source, problems)
    if spec.skills is not None:
        _attach_skills(loaded, raw_by_id, tree)
    if spec.limit_per_skill is not None:
        per: dict[Chain | None, int] = {}
        kept = []
        for p in loaded.problems:
            chains = loaded.chains.get(p.id)
            key = chains[0] if chains else None
            if per.get(key, 0) < spec.limit_per_skill:
                per[key] = per.get(key, 0) + 1
                kept.append(p)
        loaded.problems = kept
    if spec.limit is not None:
        loaded.problems = loaded.problems[: spec.limit]
    for i, p in enumerate(loaded.problems):
        p.index = i
    kept_ids = {p.id for p in loaded.problems}
    loaded.chains = {i: c for i, c in loaded.chains.items() if i in kept_ids}
    return loaded


def _attach_skills(loaded: LoadedBenchmark, raw_by_id: dict[str, dict], tree: SkillTree | None) -> None:
    spec, src = loaded.spec, loaded.spec.skills
    if tree is None:
        raise DataError(f"benchmark {spec.name!r} declares skills but no skill tree is set; set tree (e.g. "
                        "asset:tree/skill_mix) or remove the benchmark's skills entry")
    if bool(src.attribution) == bool(src.label_field):
        raise DataError(f"benchmark {spec.name!r}: skills needs exactly one of attribution or label_field")
    if src.attribution:
        from skill_distill.skill_stats import load_attribution

        attribution = load_attribution(src.attribution, tree, on_unknown=src.on_unknown)
        loaded.chains = {p.id: list(attribution[p.id]) for p in loaded.problems if attribution.get(p.id)}
        loaded.tree, loaded.skill_level = tree, "leaf"
        if attribution.dropped_chains:
            loaded.notes.append(f"{attribution.dropped_chains} attributed chains not in the tree were dropped")
    else:
        from skill_distill.labels import chains_from_labels

        rows = [{"id": p.id, src.label_field: raw_by_id[p.id].get(src.label_field)} for p in loaded.problems]
        chains, tree_used, info = chains_from_labels(rows, src.label_field, src.label_map or {}, tree,
                                                     on_unknown=src.on_unknown, source=f"{loaded.source} "
                                                     f"(benchmark {spec.name!r})")
        loaded.chains = {k: list(v) for k, v in chains.items()}
        loaded.tree, loaded.skill_level = tree_used, info["level"]
        if info["cut"]:
            loaded.notes.append(f"skills from field {src.label_field!r} are {info['level']}-level: the tree is cut at "
                                f"depth {info['depth']}")
        if info["unknown_labels"]:
            loaded.notes.append(f"labels not in label_map, dropped: {info['unknown_labels']}")
    missing = sum(1 for p in loaded.problems if p.id not in loaded.chains)
    if missing:
        loaded.notes.append(f"{missing} of {len(loaded.problems)} problems have no skill chain (overall accuracy only)")
