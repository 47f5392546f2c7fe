"""The level-batched tree walk (docs/METHOD.md §2): one backend call per tree level of a chunk of examples, with a
JSON-serialisable walk state saved after every level."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from skill_distill.attribution.prompts import NO_SOLUTION, AttributionPreset, load_template
from skill_distill.attribution.replies import interpret_reply, interpret_reply_exact, normalize_name
from skill_distill.corpus import Example
from skill_distill.formatting import final_solution, render_prompt
from skill_distill.generation.base import GenerationBackend, SamplingConfig, request_seed
from skill_distill.io import DataError
from skill_distill.skill_tree import Chain, SkillTree

log = logging.getLogger(__name__)

DROP_KEYS = ("unknown_names", "unparsable_replies", "dead_ends")
"""Per-example drop counters: names matching no child; replies with no recognisable list; expansions of an
internal node that chose no valid child (the branch ends there and yields no chain)."""


def new_counters() -> dict:
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
        self.counters = new_counters()
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
