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

The package, one module per concern: ``prompts`` (the templates), ``replies`` (parsing the attributor's answers),
``walk`` (the level-batched walk, ``SkillAttributor``), ``outputs`` (shard names, stats, merging shards) and
``stage`` (the ``attribute`` stage, ``run_attribution``). The public names are re-exported here.
"""

from skill_distill.attribution.outputs import merge_attribution_shards, shard_stem
from skill_distill.attribution.prompts import (
    DEFAULT_PROMPT_TEMPLATE,
    NO_SOLUTION,
    PAPER_PROMPT_TEMPLATE,
    TEMPLATE_FIELDS,
    AttributionPreset,
    check_template,
    load_template,
)
from skill_distill.attribution.replies import (
    interpret_reply,
    interpret_reply_exact,
    normalize_name,
    parse_reply,
    parse_reply_exact,
)
from skill_distill.attribution.stage import run_attribution
from skill_distill.attribution.walk import DROP_KEYS, SkillAttributor, attribute_examples

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE", "DROP_KEYS", "NO_SOLUTION", "PAPER_PROMPT_TEMPLATE", "TEMPLATE_FIELDS",
    "AttributionPreset", "SkillAttributor", "attribute_examples", "check_template", "interpret_reply",
    "interpret_reply_exact", "load_template", "merge_attribution_shards", "normalize_name", "parse_reply",
    "parse_reply_exact", "run_attribution", "shard_stem",
]
