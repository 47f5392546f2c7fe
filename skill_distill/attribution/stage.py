"""The ``attribute`` stage (docs/METHOD.md §2): attribute a corpus file with an LLM (resumable, shardable) or
from a label field."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from skill_distill.attribution.outputs import shard_stem, stats_name, write_stats
from skill_distill.attribution.prompts import AttributionPreset, load_template
from skill_distill.attribution.walk import DROP_KEYS, SkillAttributor, new_counters
from skill_distill.corpus import CorpusFields, Example, load_corpus, seeded_positions
from skill_distill.generation.base import SamplingConfig
from skill_distill.generation.factory import BackendConfig, make_backend  # light: backends load when built
from skill_distill.io import ConfigError, DataError, JsonlAppender, read_json, read_jsonl, write_json, write_jsonl
from skill_distill.labels import chains_from_labels, tree_from_labels
from skill_distill.skill_tree import SkillTree

log = logging.getLogger(__name__)

ATTRIBUTION_SAMPLING = SamplingConfig(temperature=0.3, top_p=1.0, max_new_tokens=2048, n=1, seed=42)
"""docs/METHOD.md §2: temperature 0.3, up to 2,048 new tokens per node reply."""

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
    tokenizer = getattr(cfg, "tokenizer", None)
    return load_tokenizer(tokenizer or cfg.model, "backend.tokenizer" if tokenizer else "backend.model")


def run_attribution(
    pool: str,
    tree: str | None,
    output_dir: str,
    backend: BackendConfig | None = None,
    sampling: SamplingConfig = ATTRIBUTION_SAMPLING,
    max_input_chars: int = 20000,
    chunk_size: int = 2048,
    guided: bool = False,
    prompt_template: str | None = None,
    shard_index: int = 0,
    num_shards: int = 1,
    limit: int | None = None,
    max_depth: int | None = None,
    display_names: str | None = None,
    fields: CorpusFields = CorpusFields(),
    label_field: str | None = None,
    label_map: dict[str, list[str]] | None = None,
    on_unknown_label: Literal["error", "drop"] = "error",
    preset: AttributionPreset = "project",
    tree_from_labels: bool = False,
    duplicate_siblings: Literal["merge", "error"] = "merge",
) -> dict:
    """Attribute every example of a corpus to skill chains (docs/METHOD.md §2) and write them to ``output_dir``.

    Writes ``attribution.jsonl`` (or ``attribution.shard-{i}-of-{n}.jsonl`` when sharded; merge with
    ``merge-attribution``), ``attribution_stats.json`` (``attribution_stats.shard-{i}-of-{n}.json``) and a
    ``*.state.json`` walk state. Rerunning the same command resumes an interrupted run. Returns the stats.

    Args:
        pool: Corpus to attribute (canonical pool JSONL, or any source ``load_corpus`` reads, with ``fields``).
        tree: Skill tree JSON (``{"name", "children"}``) or ``asset:`` name; null with ``tree_from_labels``.
        output_dir: Directory for the outputs; rerunning into it resumes.
        backend: The attributor LLM (paper: Qwen2.5-32B-Instruct on vLLM). Not needed with ``label_field``.
        sampling: The attributor's sampling (paper: temperature 0.3, up to 2,048 new tokens per node reply, top-p
            1.0, one reply); each request's seed is derived from (``seed``, example id, node path).
        max_input_chars: Problem plus written solution (text after ``</think>``) are cut to this many characters.
        chunk_size: Examples walked together; each tree level of a chunk is one backend call.
        guided: Constrain each reply to a JSON list of the node's children (vLLM structured outputs).
        prompt_template: Attribution prompt (inline text or a file); None uses DEFAULT_PROMPT_TEMPLATE.
        shard_index: This shard (0-based); shards take pool rows ``i`` with ``i % num_shards == shard_index``.
        num_shards: Number of shards that together cover the pool (each run on its own machine/GPU set).
        limit: Attribute a seeded sample of ``limit`` pool rows (smoke runs): the rows whose problems rank first
            by the pool's draw rank (``corpus.seeded_sample``), so every category keeps its share; the profile
            stage's ``limit`` takes the same problems.
        max_depth: Cut the tree at this depth first (chains then end at nodes of this depth).
        display_names: Display-name map (EvalTree ``capability_to_distinction.json``): prompts show the short
            names where they are unique among siblings; chains keep the tree's names.
        fields: Field mapping of the corpus (a trace field is optional: benchmarks may map ``solution``).
        label_field: Use this corpus field as the label instead of an LLM (see ``chains_from_labels``).
        label_map: Label value -> chain of the tree, for ``label_field``.
        on_unknown_label: ``error`` (DataError) or ``drop`` (counted) for a label value missing from label_map.
        preset: ``project`` (default: the project's prompt and lenient parsing) or ``paper`` (the reference
            scripts' prompt, input rule, exact parsing and reply order; docs/METHOD.md, appendix).
        tree_from_labels: Build the tree from the distinct values of ``label_field`` (each value a topic, or an
            ``"A->b"`` chain) instead of reading ``tree``; it is written to ``skill_tree_used.json`` for the
            later stages, and each value is its own label (no ``label_map``).
        duplicate_siblings: ``merge`` (default) sibling nodes of ``tree`` that repeat a name, or ``error``: refuse
            such a tree (for a user's own tree, where a repeat is a mistake; docs/METHOD.md §1).
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if sampling.n != 1 or sampling.top_p != 1.0:
        raise ConfigError(f"sampling: n={sampling.n}, top_p={sampling.top_p}: attribution takes one reply per node "
                          "at top_p 1.0; set temperature, max_new_tokens and seed only")
    out_dir = Path(output_dir)
    all_examples = load_corpus(pool, fields, require_trace=False)
    positions = seeded_positions(all_examples, limit)
    examples = [all_examples[i] for i in positions]
    if tree_from_labels:
        if label_field is None or label_map or tree is not None:
            raise ConfigError("tree_from_labels builds the tree from label_field's values: set label_field and "
                              "leave label_map and tree unset")
        return _run_labelled(pool, fields, positions, shard_index, num_shards, None, label_field, {},
                             on_unknown_label, out_dir, shard_stem(shard_index, num_shards),
                             {"pool": str(pool), "tree": None, "shard_index": shard_index, "num_shards": num_shards,
                              "max_depth": max_depth, "tree_from_labels": True}, max_depth)
    if tree is None:
        raise ConfigError("attribute: no tree; set tree (a JSON file or asset:tree/...), or tree_from_labels: true "
                          "with label_field")
    skill_tree = SkillTree.load(tree, display_names, duplicate_siblings)
    if max_depth is not None:
        skill_tree = skill_tree.cut(max_depth)
    shard = _select_shard(examples, shard_index, num_shards)
    stem = shard_stem(shard_index, num_shards)
    out_path = out_dir / f"{stem}.jsonl"
    extra = {"pool": str(pool), "tree": str(tree), "shard_index": shard_index, "num_shards": num_shards,
             "max_depth": max_depth}

    if label_field is not None:
        return _run_labelled(pool, fields, positions, shard_index, num_shards, skill_tree, label_field,
                             label_map or {}, on_unknown_label, out_dir, stem, extra)

    if backend is None:
        raise ConfigError("attribute: no backend configured; set backend (class_path VLLMConfig or OpenAIConfig, "
                          "init_args model, ...) or use label_field")
    template = load_template(prompt_template, preset)
    settings = {"temperature": sampling.temperature, "max_new_tokens": sampling.max_new_tokens,
                "max_input_chars": max_input_chars, "guided": guided, "seed": sampling.seed, "model": backend.model,
                "fields": asdict(fields),
                "display_names": display_names, **({"preset": preset} if preset != "project" else {})}
    fingerprint = _fingerprint(skill_tree, template, settings)
    state_path = out_dir / f"{stem}.state.json"
    state = read_json(state_path, "attribution state") if state_path.exists() else None
    if state is not None and state.get("fingerprint") != fingerprint:
        raise DataError(f"{state_path}: {output_dir} holds attribution made with other settings (tree, prompt, "
                        "sampling, model or fields); use a new output_dir or delete its attribution files")
    counters = (state or {}).get("counters") or new_counters()
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
                walker = SkillAttributor(skill_tree, engine, _load_tokenizer(engine, backend), sampling.temperature,
                                         sampling.max_new_tokens, max_input_chars, guided, template, sampling.seed,
                                         preset)
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
    stats = write_stats(out_dir / stats_name(stem), rows, counters,
                         {**extra, "level": "leaf" if max_depth is None else f"depth<={max_depth}",
                          "chunk_size": chunk_size, "guided": guided, "model": backend.model,
                          "backend": getattr(backend, "kind", None)}, skill_tree.depth, sampling.max_new_tokens)
    from skill_distill.console import summary

    chains = stats["chains"] / stats["examples"] if stats["examples"] else 0.0
    summary("attribute", [f"{stats['examples']} examples, {stats['examples_without_chain']} without a chain, "
                          f"{chains:.1f} chains per example, {stats['truncated_replies']} of {stats['prompts']} "
                          f"replies cut at the token limit, {stats['backend_calls']} backend calls",
                          f"attribution: {out_path}", f"stats: {out_dir / stats_name(stem)}",
                          *(f"warning: {w}" for w in stats["warnings"])])
    return stats


def _run_labelled(pool: str, fields: CorpusFields, positions: list[int], shard_index: int, num_shards: int,
                  tree: SkillTree | None, label_field: str, label_map: dict, on_unknown: str, out_dir: Path,
                  stem: str, extra: dict, max_depth: int | None = None) -> dict:
    """Chains from ``label_field`` for the pool rows at ``positions`` (the ``limit`` sample); with ``tree`` None the
    tree is built from the labels of the whole pool (every shard builds the same one)."""
    from skill_distill.corpus import _read_source

    all_rows, name = _read_source(str(pool), "train")
    id_field = fields.id or "_row"  # no id field: ids are pool row numbers, as load_corpus numbers them
    rows = [all_rows[i] if fields.id else {**all_rows[i], "_row": str(i)} for i in positions]
    rows = [r for k, r in enumerate(rows) if k % num_shards == shard_index]
    start = time.perf_counter()
    built = tree is None
    if built:
        tree, label_map = tree_from_labels(all_rows, label_field, source=name)
        if max_depth is not None:
            tree = tree.cut(max_depth)
            label_map = {v: c[:max_depth] for v, c in label_map.items()}
    chains, tree_used, info = chains_from_labels(rows, label_field, label_map, tree,
                                                 on_unknown, id_field, name)  # type: ignore[arg-type]
    ids = [str(r[id_field]) for r in rows]
    out = [{"id": i, "chains": [list(c) for c in chains.get(i, [])], "num_calls": 0,
            "dropped": {k: 0 for k in DROP_KEYS}} for i in ids]
    write_jsonl(out_dir / f"{stem}.jsonl", out)
    if built:
        write_json(out_dir / "skill_tree_used.json", tree_used.to_dict())
        log.info("tree built from %r: %d leaves (written to %s)", label_field, len(tree_used.leaf_chains),
                 out_dir / "skill_tree_used.json")
    elif info["cut"]:
        write_json(out_dir / "skill_tree_used.json", tree_used.to_dict())
        log.info("labelled attribution is %s-level (tree cut at depth %d, written to %s)", info["level"],
                 info["depth"], out_dir / "skill_tree_used.json")
    counters = {**new_counters(), "examples_walked": len(out), "wall_time_s": time.perf_counter() - start}
    stats = write_stats(out_dir / stats_name(stem), out, counters,
                         {**extra, "level": info["level"], "label_field": label_field, "tree_cut_depth":
                          info["depth"] if info["cut"] else None, "unknown_labels": info["unknown_labels"]})
    from skill_distill.console import summary

    summary("attribute", [f"{len(out)} examples labelled from {label_field!r} ({info['level']}-level), "
                          f"{stats['examples_without_chain']} without a chain",
                          f"attribution: {out_dir / f'{stem}.jsonl'}",
                          f"stats: {out_dir / stats_name(stem)}"])
    return stats
