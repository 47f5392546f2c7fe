"""Skill attribution (docs/METHOD.md §2): an LLM walks the skill tree top-down for every example.

At each internal node the attributor sees the problem, the teacher's written solution and the node's children,
and answers with the children the solution uses (several may apply). Every chosen child is expanded in turn;
a chain is kept only when it reaches a leaf. Cost is O(depth) requests per chosen branch.

Throughput: the corpus is processed in chunks, and each chunk is walked *level by level*: the frontier is the
set of pending (example, node path) expansions, and one level is ONE ``backend.generate`` call over all of the
chunk's pending prompts — about ``depth`` calls per chunk instead of one per example and node. The problem and
solution open every prompt, so a server with prefix caching reuses them across levels.

Resumability: the chunk's walk state is written atomically after every level (a crash loses at most one level of
one chunk); finished chunks are appended to the output JSONL, in input order. A rerun continues from the saved
state and skips finished ids. Seeds are derived from (seed, example id, node path) with SHA-256, so a resumed run
sends the same requests as an uninterrupted one.

Output rows: ``{"id": str, "chains": [[node, ..., leaf], ...], "num_calls": int, "dropped": {...}}``.

Labelled corpora need no LLM: ``chains_from_labels`` maps a field value (MATH ``subject``) onto a chain.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import re
import string
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from skill_distill.corpus import CorpusFields, Example, load_corpus
from skill_distill.formatting import final_solution, render_prompt
from skill_distill.generation.base import GenerationBackend, SamplingConfig, request_seed
from skill_distill.generation.factory import BackendConfig, make_backend  # light: backends load when built
from skill_distill.io import DataError, JsonlAppender, read_json, read_jsonl, read_text, write_json, write_jsonl
from skill_distill.labels import chains_from_labels
from skill_distill.skill_stats import load_attribution
from skill_distill.skill_tree import Chain, SkillTree

log = logging.getLogger(__name__)

DEFAULT_PROMPT_TEMPLATE = """\
Below are a math problem and its written solution. Identify the mathematical skills the solution relies on. \
The skills form a taxonomy that we go through one level at a time.

### Problem
{problem}

### Solution
{solution}

### Current skill category
{path}

### Sub-skills of this category
{children}

Which of these sub-skills does the solution use? Include every sub-skill that plays a part, even basic ones \
such as routine arithmetic; several may apply. Copy each name exactly as it is written in the list above.
Reply with a JSON list of names and nothing else, for example: ["<sub-skill>", "<another sub-skill>"]"""
"""The project's attribution prompt. Placeholders: {problem}, {solution}, {path} (root-to-node names joined by
" -> "), {node} (the current node), {children} ("- name" lines) or {numbered_children} ("1. name" lines)."""

PAPER_PROMPT_TEMPLATE = """\
Given the following Math problem:

Q&A: {problem}
{solution}

Which of the following skills are involved to understanding or solving the problem? Even the most basic skills \
such as simple addition and subtraction must be taken into account. You can select multiple options if needed. \
Just return a list of skill names.

Skills:
{children}

Answer as a Python list of strings."""
"""The reference scripts' prompt (docs/METHOD.md, appendix): ``Q&A: {qa_input}`` with ``qa_input = problem + "\n" +
solution``; no path, no system prompt. The default template of ``preset: paper``."""

AttributionPreset = Literal["project", "paper"]
"""``project`` (default): the project's prompt (with the current path), lenient parsing, a shared input budget,
chains in tree order. ``paper``: the reference scripts' exact behaviour (docs/METHOD.md, appendix): their prompt,
only the solution truncated, only exact child names from the bracketed list, chains in reply order."""

TEMPLATE_FIELDS = {"problem", "solution", "path", "node", "children", "numbered_children"}
NO_SOLUTION = "(no written solution is available; judge from the problem)"

DROP_KEYS = ("unknown_names", "unparsable_replies", "dead_ends")
"""Per-example drop counters: names matching no child; replies with no recognisable list; expansions of an
internal node that chose no valid child (the branch ends there and yields no chain)."""


# ---- prompts and replies --------------------------------------------------------------------------------------
def check_template(template: str) -> str:
    """Return ``template`` if its placeholders are known and it shows the problem and the children, else raise
    DataError. Literal braces in a template must be doubled (``{{``)."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise DataError(f"prompt_template: {e}; double literal braces as {{{{ and }}}}") from None
    unknown = names - TEMPLATE_FIELDS
    if unknown:
        raise DataError(f"prompt_template: unknown placeholder(s) {sorted(unknown)}; "
                        f"allowed: {', '.join('{' + f + '}' for f in sorted(TEMPLATE_FIELDS))}")
    if "problem" not in names or not names & {"children", "numbered_children"}:
        raise DataError("prompt_template: must contain {problem} and {children} (or {numbered_children})")
    return template


def load_template(template: str | None, preset: AttributionPreset = "project") -> str:
    """The preset's default template, an inline template, or the contents of a template file (a value without
    braces naming an existing file)."""
    if template is None:
        return PAPER_PROMPT_TEMPLATE if preset == "paper" else DEFAULT_PROMPT_TEMPLATE
    if "{" not in template and Path(template).is_file():
        template = read_text(template, "prompt template file")
    return check_template(template)


def normalize_name(name: str) -> str:
    """Case-, width- and whitespace-insensitive form of a skill name; surrounding quotes, markdown emphasis and
    trailing punctuation are removed."""
    s = unicodedata.normalize("NFKC", str(name)).strip()
    s = s.strip("\"'`*_ \t").rstrip(".,;:").strip("\"'`*_ \t")
    return " ".join(s.split()).casefold()


_BULLET = re.compile(r"^\s*(?:[-*\u2022+]|\d{1,3}[.)]|\(\d{1,3}\))\s+(.+?)\s*$")
_QUOTED = re.compile(r"\"((?:[^\"\\]|\\.)*)\"|'((?:[^'\\]|\\.)*)'")


def _flatten(v: Any) -> list[str]:
    out: list[str] = []
    for x in v:
        if isinstance(x, (list, tuple)):
            out.extend(_flatten(x))
        elif isinstance(x, (str, int, float)):
            out.append(str(x))
    return out


def parse_reply(text: str) -> tuple[list[str], bool] | None:
    """Split a reply into candidate names.

    Returns ``(names, structured)``: ``structured`` is True for a JSON list, a Python list literal or
    bullet/numbered lines (names that then match no child are *unknown names*), False for a loose
    comma-separated or one-per-line answer (which counts as unparsable if nothing matches). Returns None for
    an empty reply or an unreadable bracketed list. A reasoning prefix ending in ``</think>`` and code
    fences are ignored; a list cut off by the token limit keeps its complete quoted items.
    """
    t = text
    if "</think>" in t:
        t = t.rsplit("</think>", 1)[1]
    t = re.sub(r"```[A-Za-z]*", "", t).strip()
    if not t:
        return None
    start = t.find("[")
    if start >= 0:
        end = t.rfind("]")
        if end > start:
            fragment = t[start:end + 1]
            for loader in (json.loads, ast.literal_eval):
                try:
                    value = loader(fragment)
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    continue
                if isinstance(value, (list, tuple)):
                    return _flatten(value), True
            inner = t[start + 1:end]
            if "[" not in inner and "]" not in inner:  # [Algebra, Geometry] without quotes
                return [p for p in (x.strip() for x in inner.split(",")) if p], True
            return None
        quoted = [a or b for a, b in _QUOTED.findall(t[start:])]  # truncated list: keep complete items
        return (quoted, True) if quoted else None
    lines = [ln for ln in t.splitlines() if ln.strip()]
    bullets = [m.group(1) for ln in lines if (m := _BULLET.match(ln))]
    if bullets:
        return bullets, True
    parts = [p.strip() for ln in lines for p in re.split(r"[,;]", ln)]
    return [p for p in parts if p], False


def interpret_reply(text: str, options: dict[str, str]) -> tuple[list[str], int, bool]:
    """Match a reply against ``options`` (normalised shown name -> child name).

    Returns (chosen child names in reply order without repeats, unknown-name count, parsable).
    """
    parsed = parse_reply(text)
    if parsed is None:
        return [], 0, False
    names, structured = parsed
    chosen: list[str] = []
    unknown = 0
    for name in names:
        child = options.get(normalize_name(name))
        if child is None:
            unknown += 1
        elif child not in chosen:
            chosen.append(child)
    if not structured and not chosen:
        return [], 0, False  # free prose, not a list
    return chosen, unknown, True


def parse_reply_exact(text: str) -> list | None:
    """The reference's parsing: the text from the first ``[`` to the last ``]`` read as a Python literal; None
    when there is no such span or it is not a list literal (the branch is then dropped)."""
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        value = ast.literal_eval(text[start:end + 1])
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return list(value) if isinstance(value, (list, tuple)) else None


def interpret_reply_exact(text: str, shown_to_child: dict[str, str]) -> tuple[list[str], int, bool]:
    """``preset: paper``: (children whose shown name a reply string equals exactly, in reply order and with
    repeats, which the walk expands once each; count of other items; parsable)."""
    items = parse_reply_exact(text)
    if items is None:
        return [], 0, False
    chosen = [shown_to_child[x] for x in items if isinstance(x, str) and x in shown_to_child]
    return chosen, len(items) - len(chosen), True


# ---- the level-batched walk -------------------------------------------------------------------------------------
def _new_counters() -> dict:
    return {"backend_calls": 0, "prompts": 0, "prompt_tokens": 0, "completion_tokens": 0,
            "prompt_tokens_reported": True, "truncated_replies": 0, "examples_walked": 0, "wall_time_s": 0.0}


class SkillAttributor:
    """Walks a skill tree for batches of examples with one backend (see the module docstring).

    ``tokenizer`` renders the prompts with the attributor's chat template (thinking off). When the tree has
    display names that are unique among siblings, the prompt shows those and the reply may use either form;
    chains are always written with the tree's own names. ``guided`` passes each node's shown children as the
    allowed list of the reply (backends with ``supports_guided_choice``).
    """

    def __init__(self, tree: SkillTree, backend: GenerationBackend, tokenizer: Any, temperature: float = 0.3,
                 max_new_tokens: int = 2048, max_input_chars: int = 20000, guided: bool = False,
                 prompt_template: str | None = None, seed: int = 42, preset: AttributionPreset = "project"):
        if tree.depth == 0:
            raise DataError(f"{tree.source}: the skill tree has no children under its root; nothing to attribute")
        self.tree = tree
        self.backend = backend
        self.tokenizer = tokenizer
        if preset not in ("project", "paper"):
            raise DataError(f"attribution preset must be 'project' or 'paper', got {preset!r}")
        self.preset = preset
        self.template = load_template(prompt_template, preset)
        self.max_input_chars = max_input_chars
        self.seed = seed
        self.sampling = SamplingConfig(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens, n=1,
                                       seed=seed)
        self.guided = guided
        if guided and not getattr(backend, "supports_guided_choice", False):
            log.warning("%s has no guided decoding; replies are parsed unconstrained", type(backend).__name__)
            self.guided = False
        self.counters = _new_counters()
        self._leaf_order = {c: i for i, c in enumerate(tree.leaf_chains)}
        self._menus: dict[Chain, tuple[list[str], dict[str, str]]] = {}

    # ---- prompts ----
    def menu(self, path: Chain) -> tuple[list[str], dict[str, str]]:
        """(names shown for the children of ``path``, normalised accepted name -> child name)."""
        if path not in self._menus:
            children = [c.name for c in self.tree.node(path).children]
            display = [self.tree.display(c) for c in children]
            shown = display if len({normalize_name(d) for d in display}) == len(display) else children
            options: dict[str, str] = {}
            for real, show in zip(children, shown, strict=True):
                options.setdefault(normalize_name(show), real)
            for real in children:  # the tree's own name is accepted too, unless it is another child's label
                options.setdefault(normalize_name(real), real)
            self._menus[path] = (shown, options)
        return self._menus[path]

    def input_text(self, example: Example) -> tuple[str, str]:
        """(problem, solution) cut to ``max_input_chars`` in total, the solution shortened first. ``paper``: the
        reference's rule, the problem whole and ``trace.split("</think>")[-1][:max_input_chars]`` (unstripped)."""
        if self.preset == "paper":
            return example.problem, (example.trace or "").split("</think>")[-1][: self.max_input_chars]
        problem = example.problem[: self.max_input_chars]
        solution = final_solution(example.trace or "")[: max(0, self.max_input_chars - len(problem))]
        return problem, solution or NO_SOLUTION

    def prompt(self, example: Example, path: Chain) -> tuple[str, list[str]]:
        shown, _ = self.menu(path)
        problem, solution = self.input_text(example)
        user = self.template.format(
            problem=problem, solution=solution, path=" -> ".join((self.tree.name, *path)),
            node=path[-1] if path else self.tree.name,
            children="\n".join(f"- {s}" for s in shown),
            numbered_children="\n".join(f"{i}. {s}" for i, s in enumerate(shown, 1)),
        )
        return render_prompt(self.tokenizer, user, enable_thinking=False), shown

    # ---- walk state (JSON-serialisable, saved after every level) ----
    @staticmethod
    def new_state(example: Example) -> dict:
        # *_keys: each pending path's / chain's positions in the replies that chose it (the depth-first reply order)
        return {"id": example.id, "pending": [[]], "chains": [], "num_calls": 0,
                "dropped": {k: 0 for k in DROP_KEYS}, "pending_keys": [[]], "chain_keys": []}

    def result(self, state: dict) -> dict:
        """The output row of a finished example: its chains in tree order, each once (``paper``: in the order a
        depth-first walk of the replies meets them, as the reference writes them, repeats included)."""
        if self.preset == "paper":
            keyed = sorted(zip(state["chain_keys"], state["chains"], strict=True), key=lambda kc: kc[0])
            return {"id": state["id"], "chains": [list(c) for _, c in keyed], "num_calls": state["num_calls"],
                    "dropped": dict(state["dropped"])}
        last = len(self._leaf_order)
        chains = sorted({tuple(c) for c in state["chains"]}, key=lambda c: self._leaf_order.get(c, last))
        return {"id": state["id"], "chains": [list(c) for c in chains], "num_calls": state["num_calls"],
                "dropped": dict(state["dropped"])}

    def step(self, states: list[dict], examples: dict[str, Example]) -> int:
        """Expand every pending node of ``states`` with ONE backend call; return the number of prompts sent."""
        items = [(s, tuple(p)) for s in states for p in s["pending"]]
        if not items:
            return 0
        keys = [k for s in states for k in s.get("pending_keys") or [[]] * len(s["pending"])]
        prompts, seeds, allowed = [], [], []
        for s, path in items:
            text, shown = self.prompt(examples[s["id"]], path)
            prompts.append(text)
            seeds.append(request_seed(self.seed, s["id"], *path))
            allowed.append(shown)
        usage_before = self._reported_prompt_tokens()
        outputs = self.backend.generate(prompts, self.sampling, seeds=seeds,
                                        allowed_lists=allowed if self.guided else None)
        usage_after = self._reported_prompt_tokens()
        if usage_before is None or usage_after is None:
            self.counters["prompt_tokens_reported"] = False
        else:
            self.counters["prompt_tokens"] += usage_after - usage_before
        self.counters["backend_calls"] += 1
        self.counters["prompts"] += len(prompts)
        for s in states:
            s["pending"], s["pending_keys"] = [], []
            s.setdefault("chain_keys", [[]] * len(s["chains"]))
        for (s, path), key, completions in zip(items, keys, outputs, strict=True):
            reply = completions[0]
            self.counters["completion_tokens"] += reply.num_tokens
            self.counters["truncated_replies"] += int(not reply.finished)
            s["num_calls"] += 1
            if self.preset == "paper":
                shown, _ = self.menu(path)
                real = [c.name for c in self.tree.node(path).children]
                chosen, unknown, parsable = interpret_reply_exact(reply.text, dict(zip(shown, real, strict=True)))
            else:
                chosen, unknown, parsable = interpret_reply(reply.text, self.menu(path)[1])
            s["dropped"]["unknown_names"] += unknown
            s["dropped"]["unparsable_replies"] += int(not parsable)
            s["dropped"]["dead_ends"] += int(not chosen)
            for position, child in enumerate(chosen):
                child_path = path + (child,)
                if self.tree.is_leaf_chain(child_path):
                    s["chains"].append(list(child_path))
                    s["chain_keys"].append([*key, position])
                else:
                    s["pending"].append(list(child_path))
                    s["pending_keys"].append([*key, position])
        return len(prompts)

    def _reported_prompt_tokens(self) -> int | None:
        usage = getattr(self.backend, "usage", None)
        if isinstance(usage, dict) and "prompt_tokens" in usage:
            return int(usage["prompt_tokens"])
        return None

    def walk_chunk(self, examples: Sequence[Example], states: list[dict] | None = None,
                   on_level: Callable[[list[dict], int], None] | None = None, level: int = 0) -> list[dict]:
        """Walk ``examples`` level by level and return their output rows in input order.

        ``states`` resumes a saved walk (from ``on_level``, which is called after each level with the states
        and the number of levels done).
        """
        by_id = {e.id: e for e in examples}
        states = states if states is not None else [self.new_state(e) for e in examples]
        start = time.perf_counter()
        while any(s["pending"] for s in states):
            sent = self.step(states, by_id)
            level += 1
            log.info("attribution level %d: %d prompts for %d examples", level, sent, len(states))
            if on_level is not None:
                self.counters["wall_time_s"] += time.perf_counter() - start
                start = time.perf_counter()
                on_level(states, level)
        self.counters["wall_time_s"] += time.perf_counter() - start
        self.counters["examples_walked"] += len(states)
        return [self.result(s) for s in states]


def attribute_examples(examples: Iterable[Example], tree: SkillTree, backend: GenerationBackend,
                       tokenizer: Any = None, chunk_size: int = 2048, counters: dict | None = None,
                       **settings: Any) -> Iterator[dict]:
    """Attribute ``examples`` without touching files: yields one output row per example, in input order.

    ``tokenizer`` defaults to ``backend.tokenizer``. ``settings`` are SkillAttributor's (temperature,
    max_new_tokens, max_input_chars, guided, prompt_template, seed). ``counters``, if given, is updated with
    the run's counters (backend calls, prompts, tokens) after each chunk.
    """
    tokenizer = tokenizer if tokenizer is not None else getattr(backend, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("attribute_examples needs a tokenizer (the attributor's chat template)")
    walker = SkillAttributor(tree, backend, tokenizer, **settings)
    chunk: list[Example] = []

    def flush() -> list[dict]:
        rows = walker.walk_chunk(chunk)
        chunk.clear()
        if counters is not None:
            counters.update(walker.counters)
        return rows

    for ex in examples:
        chunk.append(ex)
        if len(chunk) >= max(1, chunk_size):
            yield from flush()
    if chunk:
        yield from flush()


# ---- labelled corpora ---------------------------------------------------------------------------------------------
# ---- files: one run, shards, merging ---------------------------------------------------------------------------
def shard_stem(shard_index: int, num_shards: int) -> str:
    """``attribution`` for a single shard, else ``attribution.shard-{i}-of-{n}``."""
    return "attribution" if num_shards == 1 else f"attribution.shard-{shard_index}-of-{num_shards}"


def _stats_name(stem: str) -> str:
    if stem == "attribution":
        return "attribution_stats.json"
    return stem.replace("attribution.", "attribution_stats.") + ".json"


def _select_shard(examples: list[Example], shard_index: int, num_shards: int) -> list[Example]:
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise DataError(f"shard_index {shard_index} / num_shards {num_shards}: need 0 <= shard_index < num_shards")
    return [e for i, e in enumerate(examples) if i % num_shards == shard_index]  # by pool row position


def _fingerprint(tree: SkillTree, template: str, settings: dict) -> str:
    blob = json.dumps({"tree": tree.to_dict(), "template": template, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_tokenizer(backend_obj: Any, cfg: BackendConfig) -> Any:
    """The backend's own tokenizer object when it has one, else the configured tokenizer (or the model's)."""
    from skill_distill.assets import load_tokenizer

    tok = getattr(backend_obj, "tokenizer", None)
    if tok is not None and not isinstance(tok, (str, Path)):
        return tok
    return load_tokenizer(getattr(cfg, "tokenizer", None) or cfg.model)


def _write_stats(path: Path, rows: list[dict], counters: dict, extra: dict) -> dict:
    dropped = {k: sum(r.get("dropped", {}).get(k, 0) for r in rows) for k in DROP_KEYS}
    wall = counters.get("wall_time_s", 0.0)
    stats = {
        "examples": len(rows),
        "examples_without_chain": sum(1 for r in rows if not r["chains"]),
        "chains": sum(len(r["chains"]) for r in rows),
        "backend_calls": counters.get("backend_calls", 0),
        "prompts": counters.get("prompts", 0),
        "prompt_tokens": counters.get("prompt_tokens", 0) if counters.get("prompt_tokens_reported", True) else None,
        "completion_tokens": counters.get("completion_tokens", 0),
        "truncated_replies": counters.get("truncated_replies", 0),
        **dropped,
        "wall_time_s": round(wall, 3),
        "examples_per_s": round(counters.get("examples_walked", 0) / wall, 4) if wall > 0 else None,
        **extra,
    }
    if stats["prompt_tokens"] is not None:
        stats["total_tokens"] = stats["prompt_tokens"] + stats["completion_tokens"]
    write_json(path, stats)
    return stats


def run_attribution(
    pool: str,
    tree: str,
    output_dir: str,
    backend: BackendConfig | None = None,
    temperature: float = 0.3,
    max_new_tokens: int = 2048,
    max_input_chars: int = 20000,
    chunk_size: int = 2048,
    guided: bool = False,
    prompt_template: str | None = None,
    shard_index: int = 0,
    num_shards: int = 1,
    seed: int = 42,
    limit: int | None = None,
    max_depth: int | None = None,
    display_names: str | None = None,
    fields: CorpusFields = CorpusFields(),
    label_field: str | None = None,
    label_map: dict[str, list[str]] | None = None,
    on_unknown_label: Literal["error", "drop"] = "error",
    preset: AttributionPreset = "project",
) -> dict:
    """Attribute every example of a corpus to skill chains (docs/METHOD.md §2) and write them to ``output_dir``.

    Writes ``attribution.jsonl`` (or ``attribution.shard-{i}-of-{n}.jsonl`` when sharded; merge with
    ``merge-attribution``), ``attribution_stats.json`` (``attribution_stats.shard-{i}-of-{n}.json``) and a
    ``*.state.json`` walk state. Rerunning the same command resumes an interrupted run. Returns the stats.

    Args:
        pool: Corpus to attribute (canonical pool JSONL, or any source ``load_corpus`` reads, with ``fields``).
        tree: Skill tree JSON (``{"name", "children"}``).
        output_dir: Directory for the outputs; rerunning into it resumes.
        backend: The attributor LLM (paper: Qwen2.5-32B-Instruct on vLLM). Not needed with ``label_field``.
        temperature: Sampling temperature of the attributor (paper: 0.3).
        max_new_tokens: Reply length limit per node (paper: 2,048).
        max_input_chars: Problem plus written solution (text after ``</think>``) are cut to this many characters.
        chunk_size: Examples walked together; each tree level of a chunk is one backend call.
        guided: Constrain each reply to a JSON list of the node's children (vLLM structured outputs).
        prompt_template: Attribution prompt (inline text or a file); None uses DEFAULT_PROMPT_TEMPLATE.
        shard_index: This shard (0-based); shards take pool rows ``i`` with ``i % num_shards == shard_index``.
        num_shards: Number of shards that together cover the pool (each run on its own machine/GPU set).
        seed: Base seed; each request's seed is derived from (seed, example id, node path).
        limit: Attribute only the first ``limit`` pool rows (smoke runs).
        max_depth: Cut the tree at this depth first (chains then end at nodes of this depth).
        display_names: Display-name map (EvalTree ``capability_to_distinction.json``): prompts show the short
            names where they are unique among siblings; chains keep the tree's names.
        fields: Field mapping of the corpus (a trace field is optional: benchmarks may map ``solution``).
        label_field: Use this corpus field as the label instead of an LLM (see ``chains_from_labels``).
        label_map: Label value -> chain of the tree, for ``label_field``.
        on_unknown_label: ``error`` (DataError) or ``drop`` (counted) for a label value missing from label_map.
        preset: ``project`` (default: the project's prompt and lenient parsing) or ``paper`` (the reference
            scripts' prompt, input rule, exact parsing and reply order; docs/METHOD.md, appendix).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out_dir = Path(output_dir)
    skill_tree = SkillTree.load(tree, display_names)
    if max_depth is not None:
        skill_tree = skill_tree.cut(max_depth)
    examples = load_corpus(pool, fields, limit=limit, require_trace=False)
    shard = _select_shard(examples, shard_index, num_shards)
    stem = shard_stem(shard_index, num_shards)
    out_path = out_dir / f"{stem}.jsonl"
    extra = {"pool": str(pool), "tree": str(tree), "shard_index": shard_index, "num_shards": num_shards,
             "max_depth": max_depth}

    if label_field is not None:
        return _run_labelled(pool, fields, limit, shard_index, num_shards, skill_tree, label_field, label_map or {},
                             on_unknown_label, out_dir, stem, extra)

    if backend is None:
        raise DataError("attribute: no backend configured; set backend (kind, model, ...) or use label_field")
    template = load_template(prompt_template, preset)
    settings = {"temperature": temperature, "max_new_tokens": max_new_tokens, "max_input_chars": max_input_chars,
                "guided": guided, "seed": seed, "model": backend.model, "fields": asdict(fields),
                "display_names": display_names, **({"preset": preset} if preset != "project" else {})}
    fingerprint = _fingerprint(skill_tree, template, settings)
    state_path = out_dir / f"{stem}.state.json"
    state = read_json(state_path, "attribution state") if state_path.exists() else None
    if state is not None and state.get("fingerprint") != fingerprint:
        raise DataError(f"{state_path}: {output_dir} holds attribution made with other settings (tree, prompt, "
                        "sampling, model or fields); use a new output_dir or delete its attribution files")
    counters = (state or {}).get("counters") or _new_counters()
    pending = (state or {}).get("chunk")

    with JsonlAppender(out_path) as appender:
        if pending and all(i in appender.done for i in pending["ids"]):
            pending = None  # the crash came after the chunk was appended, before the state was updated

        by_id = {e.id: e for e in shard}
        in_pending = set(pending["ids"]) if pending else set()
        todo = [e for e in shard if e.id not in appender.done and e.id not in in_pending]
        if pending or todo:
            engine = make_backend(backend)
            try:
                walker = SkillAttributor(skill_tree, engine, _load_tokenizer(engine, backend), temperature,
                                         max_new_tokens, max_input_chars, guided, template, seed, preset)
                walker.counters = counters

                def save(chunk_ids: list[str] | None, states: list[dict] | None, level: int) -> None:
                    chunk = None if chunk_ids is None else {"ids": chunk_ids, "level": level, "states": states}
                    write_json(state_path, {"fingerprint": fingerprint, "settings": settings, "counters": counters,
                                            "chunk": chunk}, indent=None)

                chunks: list[tuple[list[Example], list[dict] | None, int]] = []
                if pending:
                    missing = [i for i in pending["ids"] if i not in by_id]
                    if missing:
                        raise DataError(f"{state_path}: saved ids {missing[:3]} are not in {pool}; the pool changed "
                                        "since the interrupted run: use a new output_dir")
                    chunks.append(([by_id[i] for i in pending["ids"]], pending["states"], pending["level"]))
                    log.info("resuming a chunk of %d examples after level %d", len(pending["ids"]), pending["level"])
                step = max(1, chunk_size)
                chunks += [(todo[i:i + step], None, 0) for i in range(0, len(todo), step)]
                for n, (chunk_examples, states, level) in enumerate(chunks, 1):
                    ids = [e.id for e in chunk_examples]
                    log.info("attribution chunk %d/%d: %d examples", n, len(chunks), len(ids))
                    rows = walker.walk_chunk(chunk_examples, states, lambda s, lv, ids=ids: save(ids, s, lv), level)
                    appender.append(r for r in rows if r["id"] not in appender.done)
                    appender.done.update(ids)
                    save(None, None, 0)
            finally:
                engine.close()
        elif state is None:
            log.info("%s already holds every example of this shard", out_path)

    rows = read_jsonl(out_path, "attribution output", allow_torn_tail=True)
    stats = _write_stats(out_dir / _stats_name(stem), rows, counters,
                         {**extra, "level": "leaf" if max_depth is None else f"depth<={max_depth}",
                          "chunk_size": chunk_size, "guided": guided, "model": backend.model,
                          "backend": getattr(backend, "kind", None)})
    from skill_distill.console import summary

    summary("attribute", [f"{stats['examples']} examples, {stats['examples_without_chain']} without a chain, "
                          f"{stats['backend_calls']} backend calls", f"attribution: {out_path}",
                          f"stats: {out_dir / _stats_name(stem)}"])
    return stats


def _run_labelled(pool: str, fields: CorpusFields, limit: int | None, shard_index: int, num_shards: int,
                  tree: SkillTree, label_field: str, label_map: dict, on_unknown: str, out_dir: Path, stem: str,
                  extra: dict) -> dict:
    from skill_distill.corpus import _read_source

    rows, name = _read_source(str(pool), "train")
    rows = rows[:limit] if limit is not None else rows
    id_field = fields.id or "_row"  # no id field: ids are pool row numbers, as load_corpus numbers them
    rows = [r if fields.id else {**r, "_row": str(i)} for i, r in enumerate(rows) if i % num_shards == shard_index]
    start = time.perf_counter()
    chains, tree_used, info = chains_from_labels(rows, label_field, label_map, tree,
                                                 on_unknown, id_field, name)  # type: ignore[arg-type]
    ids = [str(r[id_field]) for r in rows]
    out = [{"id": i, "chains": [list(c) for c in chains.get(i, [])], "num_calls": 0,
            "dropped": {k: 0 for k in DROP_KEYS}} for i in ids]
    write_jsonl(out_dir / f"{stem}.jsonl", out)
    if info["cut"]:
        write_json(out_dir / "skill_tree_used.json", tree_used.to_dict())
        log.info("labelled attribution is %s-level (tree cut at depth %d, written to %s)", info["level"],
                 info["depth"], out_dir / "skill_tree_used.json")
    counters = {**_new_counters(), "examples_walked": len(out), "wall_time_s": time.perf_counter() - start}
    stats = _write_stats(out_dir / _stats_name(stem), out, counters,
                         {**extra, "level": info["level"], "label_field": label_field, "tree_cut_depth":
                          info["depth"] if info["cut"] else None, "unknown_labels": info["unknown_labels"]})
    from skill_distill.console import summary

    summary("attribute", [f"{len(out)} examples labelled from {label_field!r} ({info['level']}-level), "
                          f"{stats['examples_without_chain']} without a chain",
                          f"attribution: {out_dir / f'{stem}.jsonl'}",
                          f"stats: {out_dir / _stats_name(stem)}"])
    return stats


def _check_coverage(have: set[str], want: list[str], where: str) -> None:
    missing = [i for i in want if i not in have]
    extra = sorted(have - set(want))
    if missing:
        raise DataError(f"{where}: {len(missing)} pool id(s) have no attribution (e.g. {missing[:5]}); "
                        "run or finish the shards that hold them")
    if extra:
        raise DataError(f"{where}: {len(extra)} id(s) are not in the pool (e.g. {extra[:5]}); "
                        "attribution was made for another pool")


def merge_attribution_shards(output_dir: str, num_shards: int, pool: str | None = None, output: str | None = None,
                             tree: str | None = None, fields: CorpusFields = CorpusFields(),
                             limit: int | None = None) -> str:
    """Merge ``attribution.shard-{i}-of-{n}.jsonl`` files into ``attribution.jsonl`` and sum their stats.

    Args:
        output_dir: Directory the shards were written to.
        num_shards: Number of shards to merge.
        pool: The pool the shards were made from: checks that every pool id is present exactly once and orders
            the rows like the pool (without it, rows follow shard order).
        output: Merged file (default ``output_dir/attribution.jsonl``).
        tree: Skill tree: checks that every chain is a leaf chain of it.
        fields: Field mapping of ``pool``.
        limit: The ``limit`` the shards were run with.

    Raises DataError for a missing or unfinished shard, duplicate ids, ids missing from (or extra to) the
    pool, and chains absent from the tree. Returns the merged file's path.
    """
    out_dir = Path(output_dir)
    skill_tree = SkillTree.load(tree) if tree else None
    rows: list[dict] = []
    seen: dict[str, str] = {}
    dups: list[str] = []
    stats_parts: list[dict] = []
    for i in range(num_shards):
        stem = shard_stem(i, num_shards)
        path = out_dir / f"{stem}.jsonl"
        if not path.is_file():
            raise DataError(f"shard {i} of {num_shards} is missing: {path}; run attribute with shard_index={i}")
        state_path = out_dir / f"{stem}.state.json"
        if state_path.exists() and (read_json(state_path, "attribution state").get("chunk") is not None):
            raise DataError(f"{path}: shard {i} is unfinished (a chunk is still pending); rerun that shard")
        load_attribution(path, skill_tree)  # validates rows and chains with file:line errors
        for row in read_jsonl(path, "attribution shard"):
            ex_id = str(row["id"])
            if ex_id in seen:
                dups.append(f"{ex_id!r} ({seen[ex_id]} and {path.name})")
            seen[ex_id] = path.name
            rows.append(row)
        stats_path = out_dir / _stats_name(stem)
        if stats_path.is_file():
            stats_parts.append(read_json(stats_path, "attribution stats"))
    if dups:
        raise DataError(f"{out_dir}: {len(dups)} duplicate id(s) across shards, e.g. {', '.join(dups[:5])}; "
                        "shards must come from one pool and one num_shards")
    if pool is not None:
        order = [e.id for e in load_corpus(pool, fields, limit=limit, require_trace=False)]
        _check_coverage(set(seen), order, str(out_dir))
        position = {ex_id: k for k, ex_id in enumerate(order)}
        rows.sort(key=lambda r: position[str(r["id"])])
    target = Path(output) if output else out_dir / "attribution.jsonl"
    write_jsonl(target, rows)
    if stats_parts:
        summed: dict[str, Any] = {}
        for key in ("backend_calls", "prompts", "prompt_tokens", "completion_tokens", "truncated_replies",
                    "wall_time_s"):
            values = [s.get(key) for s in stats_parts]
            summed[key] = None if any(v is None for v in values) else sum(values)
        counters = {**_new_counters(), **{k: v for k, v in summed.items() if v is not None},
                    "prompt_tokens_reported": summed["prompt_tokens"] is not None,
                    "examples_walked": sum(s.get("examples", 0) for s in stats_parts)}
        first = stats_parts[0]
        _write_stats(out_dir / "attribution_stats.json", rows, counters,
                     {k: first.get(k) for k in ("pool", "tree", "level", "guided", "model", "backend")}
                     | {"num_shards": num_shards, "merged_from": len(stats_parts)})
    log.info("merged %d shards (%d examples) into %s", num_shards, len(rows), target)
    return str(target)
