"""The attribution stage's files (docs/METHOD.md §2): shard names, the stats file, and merging shards."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from skill_distill.attribution.walk import DROP_KEYS, new_counters
from skill_distill.corpus import CorpusFields, load_corpus, seeded_sample
from skill_distill.io import DataError, read_json, read_jsonl, write_json, write_jsonl
from skill_distill.skill_stats import load_attribution
from skill_distill.skill_tree import SkillTree

log = logging.getLogger(__name__)

def shard_stem(shard_index: int, num_shards: int) -> str:
    """``attribution`` for a single shard, else ``attribution.shard-{i}-of-{n}``."""
    return "attribution" if num_shards == 1 else f"attribution.shard-{shard_index}-of-{num_shards}"


def stats_name(stem: str) -> str:
    if stem == "attribution":
        return "attribution_stats.json"
    return stem.replace("attribution.", "attribution_stats.") + ".json"


TRUNCATION_WARN_RATE = 0.05
"""The attribute summary warns when more than this share of the attributor's replies hit the token limit."""
CHAINS_WARN_FACTOR = 3.0
"""... and when the mean chains per example exceed this many times the tree's depth (``quality_warnings``)."""


def quality_warnings(stats: dict, depth: int | None, max_new_tokens: int | None = None) -> list[str]:
    """Warnings, each naming its fix, for an attribution that looks like junk although every example got chains.

    - More than ``TRUNCATION_WARN_RATE`` (5%) of replies were cut at the token limit: a cut reply lists children
      that were never meant, or none.
    - More than ``CHAINS_WARN_FACTOR`` (3) times ``depth`` chains per example. The expectation is about one chain
      per level of the tree: a solution uses a few skills, and a walk that keeps one or two children per node
      ends in about ``depth`` leaves. A mean above 3x that means the attributor picks most children at every node.
    """
    out = []
    prompts, truncated = stats.get("prompts") or 0, stats.get("truncated_replies") or 0
    if prompts and truncated / prompts > TRUNCATION_WARN_RATE:
        limit = f" ({max_new_tokens})" if max_new_tokens else ""
        out.append(f"{truncated} of {prompts} attributor replies ({100 * truncated / prompts:.0f}%) were cut at "
                   f"sampling.max_new_tokens{limit}: raise it, or set guided: true so that a reply is a short list")
    examples = stats.get("examples") or 0
    if depth and examples:
        mean, expected = stats.get("chains", 0) / examples, CHAINS_WARN_FACTOR * depth
        if mean > expected:
            out.append(f"{mean:.1f} chains per example, more than {CHAINS_WARN_FACTOR:g}x the tree's depth {depth} "
                       f"(> {expected:g}): the attributor picks most children at every node; use a stronger "
                       "attributor, guided: true, or label_field for labelled data (docs/OWN_DATA.md)")
    return out


def write_stats(path: Path, rows: list[dict], counters: dict, extra: dict, depth: int | None = None,
                max_new_tokens: int | None = None) -> dict:
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
    stats["warnings"] = quality_warnings(stats, depth, max_new_tokens)
    write_json(path, stats)
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
        stats_path = out_dir / stats_name(stem)
        if stats_path.is_file():
            stats_parts.append(read_json(stats_path, "attribution stats"))
    if dups:
        raise DataError(f"{out_dir}: {len(dups)} duplicate id(s) across shards, e.g. {', '.join(dups[:5])}; "
                        "shards must come from one pool and one num_shards")
    if pool is not None:
        order = [e.id for e in seeded_sample(load_corpus(pool, fields, require_trace=False), limit)]
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
        counters = {**new_counters(), **{k: v for k, v in summed.items() if v is not None},
                    "prompt_tokens_reported": summed["prompt_tokens"] is not None,
                    "examples_walked": sum(s.get("examples", 0) for s in stats_parts)}
        first = stats_parts[0]
        stats = write_stats(out_dir / "attribution_stats.json", rows, counters,
                     {k: first.get(k) for k in ("pool", "tree", "level", "guided", "model", "backend")}
                     | {"num_shards": num_shards, "merged_from": len(stats_parts)},
                     skill_tree.depth if skill_tree else None)
        for warning in stats["warnings"]:
            log.warning("%s", warning)
    log.info("merged %d shards (%d examples) into %s", num_shards, len(rows), target)
    return str(target)
