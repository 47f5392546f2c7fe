"""The ``pool`` stage: a seeded sample of problems from a teacher corpus at OpenMathReasoning's scale, read in
bounded memory, filtered, deduplicated by problem, decontaminated, with a held-out slice disjoint by problem
(docs/METHOD.md "Idea": 100K problems with DeepSeek-R1 traces)."""

from __future__ import annotations

import hashlib
import heapq
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from skill_distill.corpus import (
    CorpusFields,
    Example,
    _answer_of,
    _as_rate,
    _problem_of,
    _trace_of,
    problem_key,
)
from skill_distill.decontamination import (
    COUNTS_FILE,
    HITS_FILE,
    BenchmarkIndex,
    DecontaminationConfig,
    HitCounter,
)
from skill_distill.io import ConfigError, DataError, atomic_write, read_json, write_json
from skill_distill.rows import iter_row_batches, source_name


@dataclass
class PoolSource:
    """Where the pool stage reads its teacher corpus, and how."""

    corpus: str
    """.jsonl/.json/.parquet file, a directory or glob of Parquet files, an ``asset:corpus/...`` name, or an HF
    dataset name (streamed; the paper: ``nvidia/OpenMathReasoning``, split ``cot``)."""
    split: str = "train"
    """Dataset split of an HF dataset."""
    fields: CorpusFields = field(default_factory=CorpusFields)
    """Which source fields hold id, problem, trace (and reasoning), answer, pass rate, generator and type."""
    keep_fields: list[str] = field(default_factory=list)
    """Source fields copied unchanged into every pool row beside the canonical ones (e.g. ``[category]``, for
    labelled attribution with ``label_field: category`` or ``tree_from_labels``); a row missing one is an error."""
    append_boxed_answer: bool = False
    """Append ``\\n\\nThe final answer is \\boxed{answer}.`` (the reference answer) to every trace without a
    ``\\boxed{``: evaluation and the training target grade boxed answers only, so a corpus whose solutions end in
    prose would teach an answer format that never passes grading. The pool summary warns when most traces lack a
    box."""
    limit: int | None = None
    """Read only the first this many rows of the source (a cap on reading for quick runs; the pool is then drawn
    from those rows by ``draw``, so use ``draw.size`` for a uniform sample); None reads all."""
    batch_size: int = 1000
    """Source rows per read: the memory bound (the output is the same for any value)."""

    def __post_init__(self):
        if not str(self.corpus).strip():
            raise ConfigError("source.corpus is empty; name a corpus file, folder, glob or HF dataset")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"source.limit must be >= 1 (or null to read everything), got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"source.batch_size must be >= 1, got {self.batch_size}")
        clash = sorted(set(self.keep_fields) & set(asdict(Example("", ""))))
        if clash:
            raise ConfigError(f"source.keep_fields {clash} would overwrite canonical pool fields; map them with "
                              "source.fields instead")


@dataclass
class PoolDraw:
    """The seeded draw of problems (``run_pool``): the held-out slice first, then the pool."""

    size: int | None = None
    """Pool size in problems (the paper: 100,000); None keeps every problem not held out."""
    heldout: int = 0
    """Problems set aside for per-epoch monitoring; selection never sees them."""
    seed: int = 42
    """Seed of the draw: problems rank by sha256(seed, normalised text), traces by sha256(seed, row)."""
    max_traces_per_problem: int = 1
    """Traces kept per problem (each becomes a pool row; ids stay unique)."""

    def __post_init__(self):
        if self.size is not None and self.size < 1:
            raise ConfigError(f"draw.size must be >= 1 (or null for every problem), got {self.size}")
        if self.heldout < 0:
            raise ConfigError(f"draw.heldout must be >= 0, got {self.heldout}")
        if self.max_traces_per_problem < 1:
            raise ConfigError(f"draw.max_traces_per_problem must be >= 1, got {self.max_traces_per_problem}")

    @property
    def problems_wanted(self) -> int | None:
        return None if self.size is None else self.size + self.heldout


@dataclass
class TokenCount:
    """Token counts in the student's tokenizer: needed by ``filters.max_tokens`` and reported in the stats."""

    tokenizer: str | None = None
    """The student's tokenizer (HF folder, hub name or ``asset:`` name, e.g. ``asset:qwen3-tokenizer``); None
    counts no tokens."""
    lengths: list[int] = field(default_factory=list)
    """Training lengths (e.g. the paper's 8192) for which the stats count the pool traces that exceed them and those
    whose final answer would be cut off (the last ``\\boxed{`` at or after the length minus the prompt's tokens)."""

    def __post_init__(self):
        bad = [n for n in self.lengths if n < 1]
        if bad:
            raise ConfigError(f"tokens.lengths must be positive token counts, got {bad}")
        if self.lengths and not self.tokenizer:
            raise ConfigError("tokens.lengths counts tokens of the student: set tokens.tokenizer")


@dataclass
class PoolFilter:
    """Row filters of the pool stage, applied in this order; each drop is counted under its name in the stats."""

    generation_model: list[str] | None = None
    """Keep rows whose ``fields.generation_model`` value is one of these (OpenMathReasoning: ``[DeepSeek-R1]``,
    the paper's teacher); None keeps every generator."""
    problem_type: list[str] | None = None
    """Keep rows whose ``fields.problem_type`` value is one of these (OpenMathReasoning:
    ``[has_answer_extracted]``); None keeps all."""
    require_answer: bool = True
    """Drop examples without a reference answer (they cannot be graded)."""
    require_think_close: bool = True
    """Drop traces without ``</think>`` (no separable final solution)."""
    max_problem_chars: int | None = None
    """Drop problems longer than this many characters (None keeps all)."""
    max_trace_chars: int | None = None
    """Drop traces longer than this many characters (None keeps all)."""
    max_tokens: int | None = None
    """Drop rows whose prompt (the chat-templated user turn, docs/METHOD.md §5) plus trace exceed this many tokens
    of ``tokens.tokenizer`` (None keeps all). Only rows that pass every other filter and rank among the sampled
    problems when they are read are tokenised."""

    def __post_init__(self):
        for name in ("max_problem_chars", "max_trace_chars", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"filters.{name} must be >= 1 (or null to keep all), got {value}")

    def drop_reason(self, row: dict, fields: CorpusFields, where: str) -> tuple[str | None, str, str]:
        """(the name of the first filter that drops ``row`` or None, its problem text, its trace); a missing or
        empty required field raises DataError naming ``where``."""
        for role in ("problem", "trace", "generation_model", "problem_type"):
            key = getattr(fields, role)
            needed = (role in ("problem", "trace") and not fields.messages) or getattr(self, role, None) is not None
            if key and needed and key not in row:
                raise DataError(f"{where}: missing field {key!r} ({role}); "
                                f"set the corpus field mapping (source.fields.{role})")
        if self.generation_model is not None and row.get(fields.generation_model) not in self.generation_model:
            return "generation_model", "", ""
        if self.problem_type is not None and row.get(fields.problem_type) not in self.problem_type:
            return "problem_type", "", ""
        problem = _problem_of(row, fields, where)
        if self.require_answer and not _answer_of(row, fields).strip():
            return "no_answer", problem, ""
        trace = _trace_of(row, fields, where)
        if self.require_think_close and "</think>" not in trace:
            return "no_think_close", problem, trace
        if self.max_problem_chars is not None and len(problem) > self.max_problem_chars:
            return "problem_chars", problem, trace
        if self.max_trace_chars is not None and len(trace) > self.max_trace_chars:
            return "trace_chars", problem, trace
        return None, problem, trace


DROP_REASONS = ("generation_model", "problem_type", "no_answer", "no_think_close", "problem_chars", "trace_chars",
                "benchmark_overlap", "tokens")
UNBOXED_WARN_SHARE = 0.5
"""The pool summary warns when more than this share of the kept traces has no ``\\boxed{``."""


def with_boxed_answer(trace: str, answer: str) -> str:
    """``trace`` with the reference answer appended in the graded format when it has no ``\\boxed{``."""
    if "\\boxed{" in trace or not answer.strip():
        return trace
    return f"{trace.rstrip()}\n\nThe final answer is \\boxed{{{answer}}}."


def unboxed_warning(unboxed: int, rows: int) -> str | None:
    """The pool's warning when most traces lack ``\\boxed{`` (None otherwise)."""
    if not rows or unboxed / rows <= UNBOXED_WARN_SHARE:
        return None
    return (f"{unboxed} of {rows} pool traces ({100 * unboxed / rows:.0f}%) have no \\boxed{{answer}}: evaluation "
            "grades boxed answers only, so a student trained on them scores 0 by construction; set "
            "source.append_boxed_answer: true to append the reference answer boxed (docs/OWN_DATA.md)")


DROP_SETTINGS = {"generation_model": "filters.generation_model", "problem_type": "filters.problem_type",
                 "no_answer": "filters.require_answer", "no_think_close": "filters.require_think_close",
                 "problem_chars": "filters.max_problem_chars", "trace_chars": "filters.max_trace_chars",
                 "benchmark_overlap": "decontamination.enabled", "tokens": "filters.max_tokens"}
"""The setting behind each drop reason, named by the messages so that a user knows which key to relax."""


def dropped_text(dropped: dict[str, int]) -> str:
    """``5 no_think_close (filters.require_think_close)``, ... for the drops that happened, or ``none``."""
    return ", ".join(f"{n} {why} ({DROP_SETTINGS[why]})" for why, n in dropped.items() if n) or "none"


def rendering_defects(text: str) -> int:
    """How far a rendering of a problem is from a clean one: whitespace beyond single spaces plus upper-case letters
    (a shouted, double-spaced copy scores high; all renderings of a problem have the same normalised text)."""
    return len(text) - len(" ".join(text.split())) + sum(1 for c in text if c.isupper())


def cleanest_rendering(renderings: dict[str, int]) -> str:
    """The text stored for a problem among its renderings (text -> rows): fewest ``rendering_defects``, then the
    most frequent, then the first in code-point order (independent of source order and batch size)."""
    return min(renderings, key=lambda text: (rendering_defects(text), -renderings[text], text))


def trace_key(seed: int, problem: str, trace: str) -> int:
    """The rank of a trace among its problem's traces: sha256 of the seed and the row's text."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{problem}\0{trace}".encode()).digest()[:16], "big")


class TokenMeter:
    """Token counts in the student's tokenizer: prompt (docs/METHOD.md §5 user turn), trace, and the position in the
    trace of the token where its last ``\\boxed{`` starts."""

    def __init__(self, tokenizer: str):
        from skill_distill.assets import load_tokenizer

        self.name = tokenizer
        self.tok = load_tokenizer(tokenizer)

    def measure(self, problem: str, trace: str) -> tuple[int, int, int | None]:
        import bisect

        from skill_distill.formatting import render_prompt, user_message

        prompt = render_prompt(self.tok, user_message(problem))
        n_prompt = len(self.tok(prompt, add_special_tokens=False)["input_ids"])
        enc = self.tok(trace, add_special_tokens=False, return_offsets_mapping=True)
        at = trace.rfind("\\boxed{")
        boxed = None
        if at >= 0:  # the first token ending after the box starts is the one that holds its first character
            boxed = bisect.bisect_right([end for _, end in enc["offset_mapping"]], at)
        return n_prompt, len(enc["input_ids"]), boxed


STATS_FILE = "pool_stats.json"


def read_pool_stats(pool: str | Path) -> dict | None:
    """The pool stage's ``pool_stats.json`` beside a pool file (its trace-length counts under ``tokens``), or None."""
    p = Path(pool).parent / STATS_FILE
    return read_json(p, "pool stats") if p.is_file() else None


def _truncation_stats(measures: list[tuple[int, int, int | None]], lengths: list[int]) -> dict:
    out = {"rows": len(measures), "no_boxed": sum(1 for m in measures if m[2] is None), "over": {}, "answer_lost": {}}
    for length in lengths:
        out["over"][str(length)] = sum(1 for p, t, _ in measures if p + t > length)
        out["answer_lost"][str(length)] = sum(1 for p, _, b in measures if b is not None and b >= length - p)
    return out


def _indexed_batches(source: PoolSource, columns: list[str], limit: int | None):
    """(index of the first row, rows) in source order; ``limit`` stops reading. The caller drops each batch before
    asking for the next, so one batch of source rows is alive at a time."""
    index = 0
    for batch in iter_row_batches(source.corpus, source.batch_size, columns, source.split):
        if limit is not None and index + len(batch) > limit:
            del batch[limit - index:]
        n = len(batch)
        if n:
            yield index, batch
        del batch
        index += n
        if limit is not None and index >= limit:
            return


def _columns(fields: CorpusFields, *names: str) -> list[str]:
    return [c for c in (getattr(fields, n) for n in names) if c]


class ProblemSample:
    """Pass 1's bounded state: the ``want`` lowest-ranked problems seen so far (a max-heap of their keys), each with
    its lowest-ranked traces and the renderings of its text, and per problem key the rows passing the filters."""

    def __init__(self, want: int | None, max_traces: int):
        self.want, self.max_traces = want, max_traces
        self.passing: dict[int, int] = {}
        """Problem key -> rows passing the filters; -1: overlaps a benchmark."""
        self.chosen: dict[int, list[tuple[int, int, tuple | None]]] = {}
        """Problem key -> sorted (trace key, row index, token measure)."""
        self.renderings: dict[int, dict[str, int]] = {}
        """Problem key of ``chosen`` -> its texts as written -> rows (every passing row since it entered)."""
        self._heap: list[int] = []  # negated keys of ``chosen``: the worst ranked on top

    def _full(self) -> bool:
        return self.want is not None and len(self.chosen) >= self.want

    def ranks_out(self, pkey: int) -> bool:
        """Whether a problem outside a full sample ranks after all of it: it can never enter any more."""
        return pkey not in self.chosen and self._full() and pkey > -self._heap[0]

    def note_rendering(self, pkey: int, problem: str) -> None:
        seen = self.renderings.get(pkey)
        if seen is not None:
            seen[problem] = seen.get(problem, 0) + 1

    def trace_ranks_out(self, pkey: int, tkey: int, row: int) -> bool:
        """Whether a trace of a sampled problem ranks after all of the problem's kept traces."""
        traces = self.chosen.get(pkey)
        return traces is not None and len(traces) >= self.max_traces and (tkey, row) >= traces[-1][:2]

    def add(self, pkey: int, problem: str, tkey: int, row: int, measure: tuple | None) -> None:
        traces = self.chosen.get(pkey)
        if traces is None:
            if self._full():
                evicted = -heapq.heappushpop(self._heap, -pkey)
                del self.chosen[evicted], self.renderings[evicted]
            elif self.want is not None:
                heapq.heappush(self._heap, -pkey)
            traces = self.chosen[pkey] = []
            self.renderings[pkey] = {problem: 1}
        traces.append((tkey, row, measure))
        traces.sort()
        del traces[self.max_traces:]


def _draw(source: PoolSource, draw: PoolDraw, filters: PoolFilter, meter: TokenMeter | None,
          counter: HitCounter | None, name: str) -> tuple[ProblemSample, dict[str, int], list[dict], int]:
    """Pass 1: filter, decontaminate, and keep the keys of the lowest-ranked problems and traces. Returns the sample,
    the drops per filter, the benchmark hits and the rows read."""
    fields = source.fields
    sample = ProblemSample(draw.problems_wanted, draw.max_traces_per_problem)
    dropped = dict.fromkeys(DROP_REASONS, 0)
    hits: list[dict] = []
    read = 0
    cols = _columns(fields, "id", "problem", "trace", "reasoning", "answer", "generation_model", "problem_type",
                    "messages")
    for start, batch in _indexed_batches(source, cols, source.limit):
        for i, row in enumerate(batch, start):
            read += 1
            reason, problem, trace = filters.drop_reason(row, fields, f"{name}: row {i + 1}")
            if reason is not None:
                dropped[reason] += 1
                continue
            pkey = problem_key(draw.seed, problem)
            count = sample.passing.get(pkey)
            if count is None and counter is not None:
                found = counter.check(str(row[fields.id]) if fields.id else str(i), problem)
                if found:
                    hits.extend(found)
                    count = sample.passing[pkey] = -1
            if count == -1:
                dropped["benchmark_overlap"] += 1
                continue
            sample.passing[pkey] = (count or 0) + 1
            if sample.ranks_out(pkey):
                continue
            sample.note_rendering(pkey, problem)
            tkey = trace_key(draw.seed, problem, trace)
            if sample.trace_ranks_out(pkey, tkey, i):
                continue
            measure = meter.measure(problem, trace) if meter is not None else None
            if filters.max_tokens is not None and measure[0] + measure[1] > filters.max_tokens:
                dropped["tokens"] += 1
                sample.passing[pkey] -= 1
                continue
            sample.add(pkey, problem, tkey, i, measure)
        del batch, row  # one batch of source rows alive at a time
    return sample, dropped, hits, read


def _write_rows(source: PoolSource, out: Path, part: dict[int, str], text_of: dict[int, str],
                name: str) -> dict[str, int]:
    """Pass 2: write the chosen rows in source order, each with its problem's cleanest rendering."""
    fields = source.fields
    written = {"pool": 0, "heldout": 0, "unboxed": 0, "boxed_appended": 0}
    ids: dict[str, int] = {}
    cols = _columns(fields, "id", "problem", "trace", "reasoning", "answer", "pass_rate", "messages")
    cols += [k for k in source.keep_fields if k not in cols]
    with atomic_write(out / "pool.jsonl") as fp, atomic_write(out / "heldout.jsonl") as fh:
        sinks = {"pool": fp, "heldout": fh}
        for start, batch in _indexed_batches(source, cols, max(part, default=-1) + 1):
            for i, row in enumerate(batch, start):
                which = part.get(i)
                if which is None:
                    continue
                where = f"{name}: row {i + 1}"
                ex_id = str(i) if fields.id is None else str(row.get(fields.id))
                if fields.id is not None and fields.id not in row:
                    raise DataError(f"{where}: missing id field {fields.id!r}; set source.fields.id, or null to "
                                    "number rows")
                if ex_id in ids:
                    raise DataError(f"{where}: duplicate id {ex_id!r} (first at row {ids[ex_id] + 1}); "
                                    "ids must be unique")
                ids[ex_id] = i
                ex = Example(id=ex_id, problem=text_of[i], trace=_trace_of(row, fields, where),
                             answer=_answer_of(row, fields),
                             pass_rate=_as_rate(row.get(fields.pass_rate) if fields.pass_rate else None))
                if source.append_boxed_answer:
                    boxed = with_boxed_answer(ex.trace, ex.answer)
                    written["boxed_appended"] += boxed != ex.trace
                    ex.trace = boxed
                written["unboxed"] += "\\boxed{" not in ex.trace
                missing = [k for k in source.keep_fields if k not in row]
                if missing:
                    raise DataError(f"{where}: missing field {missing[0]!r} of source.keep_fields; fix the row or "
                                    "drop it from keep_fields")
                kept = {k: row[k] for k in source.keep_fields}
                sinks[which].write(json.dumps({**ex.to_row(), **kept}, ensure_ascii=False, default=str) + "\n")
                written[which] += 1
            del batch, row
    return written


def run_pool(source: PoolSource, output_dir: str, draw: PoolDraw = PoolDraw(), filters: PoolFilter = PoolFilter(),
             tokens: TokenCount = TokenCount(),
             decontamination: DecontaminationConfig = DecontaminationConfig()) -> dict:
    """Build the training pool and its held-out slice from a teacher corpus (the ``pool`` stage).

    The pool is a seeded uniform sample of *problems* (docs/METHOD.md "Idea": 100K problems with DeepSeek-R1
    traces): rows that pass the filters are grouped by normalised problem text; problems are ranked by
    sha256(seed, normalised text) (``problem_key``), the first ``draw.heldout`` form the held-out slice and the next
    ``draw.size`` the pool, so the two share no problem; each problem keeps its ``max_traces_per_problem`` traces
    with the lowest sha256(seed, row) (``trace_key``), and every row of a problem carries the problem's cleanest
    rendering among its rows (``cleanest_rendering``; identity stays the normalised text). The source is read
    twice in batches (one batch of rows in memory: pass 1 keeps only keys of the problems still in the sample, pass 2
    writes their rows in source order), so the output does not depend on ``source.batch_size``. Problems that
    overlap an evaluation set are dropped before the draw (``skill_distill.decontamination``).

    Args:
        source: the corpus, its split, field mapping, row limit and read batch size.
        output_dir: writes ``pool.jsonl``, ``heldout.jsonl`` (canonical rows), ``pool_stats.json``,
            ``decontamination.json`` and ``decontamination_hits.jsonl``.
        draw: pool size, held-out size, seed, traces per problem.
        filters: generator, problem type, answer present, ``</think>`` present, length caps (characters, tokens).
        tokens: the student's tokenizer and the training lengths whose truncation the stats count.
        decontamination: evaluation sets the pool is checked against, and the rules (default: every registered
            set; ``skill_distill.decontamination``).

    Returns the stats. Raises DataError for a missing field, an unreadable source, or too few problems, and
    ConfigError for settings that do not fit together.
    """
    if filters.max_tokens and not tokens.tokenizer:
        raise ConfigError("filters.max_tokens counts tokens of the student: set tokens.tokenizer")
    name = source_name(source.corpus, source.split)
    meter = TokenMeter(tokens.tokenizer) if tokens.tokenizer else None
    counter = (HitCounter(BenchmarkIndex.from_config(decontamination), decontamination)
               if decontamination.enabled else None)
    sample, dropped, hits, read = _draw(source, draw, filters, meter, counter, name)

    want, heldout, limit = draw.problems_wanted, draw.heldout, source.limit
    ranked = sorted(sample.chosen)
    if not ranked:
        raise DataError(f"{name}: no row of the {read} read passes the filters (dropped: {dropped_text(dropped)}); "
                        "check source.fields, or relax the setting named beside the drop")
    if want is not None and len(ranked) < want:
        raise DataError(f"{name}: pool of {draw.size} plus held-out {heldout} needs {want} problems, but only "
                        f"{len(ranked)} distinct problems pass the filters (of {read} rows read"
                        f"{f', limit {limit}' if limit is not None else ''}); lower size or heldout, or relax filters")
    if heldout > len(ranked):
        raise DataError(f"{name}: held-out {heldout} needs {heldout} problems, but only {len(ranked)} pass the filters")
    part, text_of = {}, {}
    for rank, pkey in enumerate(ranked):
        text = cleanest_rendering(sample.renderings[pkey])
        for _, i, _ in sample.chosen[pkey]:
            part[i] = "heldout" if rank < heldout else "pool"
            text_of[i] = text
    out = Path(output_dir)
    written = _write_rows(source, out, part, text_of, name)

    passing = sample.passing
    passed = sum(c for c in passing.values() if c > 0)
    per_problem = draw.max_traces_per_problem
    stats = {
        "corpus": str(source.corpus), "split": source.split, "rows_read": read, "dropped": dropped,
        "passed_filters": passed, "problems": sum(1 for c in passing.values() if c > 0),
        "duplicates_merged": sum(c - per_problem for c in passing.values() if c > per_problem),
        "kept": {k: written[k] for k in ("pool", "heldout")}, "pool": written["pool"], "heldout": written["heldout"],
        "traces_without_boxed": written["unboxed"], "boxed_answers_appended": written["boxed_appended"],
        "pool_problems": max(0, len(ranked) - heldout), "heldout_problems": min(heldout, len(ranked)),
        "seed": draw.seed, "size": draw.size, "max_traces_per_problem": per_problem, "limit": limit,
        "fields": asdict(source.fields), "filters": asdict(filters),
    }
    if meter is not None:
        pool_rows = [m for pkey in ranked[heldout:] for _, _, m in sample.chosen[pkey]]
        stats["tokens"] = {"tokenizer": meter.name, **_truncation_stats(pool_rows, list(tokens.lengths))}
    if counter is not None:
        summary = counter.summary()
        summary.update({"hits_file": HITS_FILE, "config": asdict(decontamination)})
        stats["decontamination"] = summary
        with atomic_write(out / HITS_FILE) as f:
            for h in hits:
                f.write(json.dumps(h, ensure_ascii=False) + "\n")
        write_json(out / COUNTS_FILE, summary)
    warning = unboxed_warning(written["unboxed"], written["pool"] + written["heldout"])
    stats["warnings"] = [warning] if warning else []
    write_json(out / STATS_FILE, stats)
    _print_summary(stats, out, counter is not None)
    return stats


def _print_summary(stats: dict, out: Path, decontaminated: bool) -> None:
    from skill_distill.console import summary as print_summary

    dropped = dropped_text(stats["dropped"])
    lines = [f"{stats['rows_read']} source rows, {stats['passed_filters']} pass the filters (dropped: {dropped}), "
             f"{stats['duplicates_merged']} duplicate traces of a problem merged",
             f"pool: {stats['pool']} examples -> {out / 'pool.jsonl'}",
             f"held-out: {stats['heldout']} examples -> {out / 'heldout.jsonl'}"]
    if decontaminated:
        overlap = stats["dropped"].get("benchmark_overlap", 0)
        lines.append(f"decontamination: {overlap} problems overlap an evaluation set -> {out / HITS_FILE}")
    if stats["boxed_answers_appended"]:
        lines.append(f"{stats['boxed_answers_appended']} traces got the reference answer appended as \\boxed{{}}")
    print_summary("pool", [*lines, f"stats: {out / STATS_FILE}", *(f"warning: {w}" for w in stats["warnings"])])
