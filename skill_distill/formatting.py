"""Prompts and responses: the one place that decides what the student sees and what it is trained to write.

User turn (docs/METHOD.md §5): the standard Qwen math instruction, a blank line, then ``Question: {problem}``.
The assistant target is appended *verbatim* after the chat template's generation prompt: Qwen3's template
rebuilds assistant messages from their ``<think>`` part and would drop a skill block standing before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from skill_distill.io import ConfigError
from skill_distill.skill_tree import Chain, SkillTree, format_chain, parse_chain

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
USER_TEMPLATE = "{instruction}\n\nQuestion: {problem}"

SkillLabelMode = Literal["off", "full", "topic", "leaf", "window"]


@dataclass
class SkillFormat:
    """How the skill block is written before the teacher trace (docs/METHOD.md §5 and its ablations)."""

    mode: SkillLabelMode = "full"
    """off: plain SFT; full: whole chain ``A->b``; topic: first node only; leaf: last node only;
    window: nodes ``depth_start..depth_end`` (0-based, inclusive) of each chain."""
    depth_start: int = 0
    """window: the first depth written (0 is the topic)."""
    depth_end: int | None = None
    """window: the last depth written, inclusive (None: to the chain's end)."""
    use_display_names: bool = False
    """Map long node names through the tree's display-name map (EvalTree's short names)."""
    tree_in_prompt: bool = False
    """Put the whole skill tree (as indented names) in the user turn (an ablation of the paper)."""
    header: str = "Skills:"
    """The block's first line; evaluation reads a written block back by it."""
    preset: Literal["project", "paper"] = "project"
    """project: an example without chains gets no block; paper: the reference scripts' empty block
    (``header`` + ``"\n"`` + ``"\n"``, docs/METHOD.md, appendix). Chains are written in the order given (the
    attribution's: tree order, or reply order with the attribution's ``preset: paper``)."""

    def __post_init__(self) -> None:
        """Checked when the config is parsed: one ConfigError naming the field and what is accepted."""
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"skill_format.{name}={getattr(self, name)!r}: {why}")

        if self.mode not in ("off", "full", "topic", "leaf", "window"):
            raise bad("mode", "choose one of off, full, topic, leaf, window")
        if self.depth_start < 0:
            raise bad("depth_start", "must be >= 0 (0 is the topic)")
        if self.depth_end is not None and self.depth_end < self.depth_start:
            raise bad("depth_end", f"must be >= depth_start ({self.depth_start}), or null for the chain's end")
        if not self.header.strip() or "\n" in self.header or "<think>" in self.header:
            raise bad("header", "must be one non-empty line without <think> (the block is read back by it)")
        if self.preset not in ("project", "paper"):
            raise bad("preset", "choose one of project, paper")


def user_message(problem: str, instruction: str = DEFAULT_INSTRUCTION, tree_text: str | None = None) -> str:
    text = USER_TEMPLATE.format(instruction=instruction, problem=problem)
    if tree_text:
        text = f"Skill tree:\n{tree_text}\n\n{text}"
    return text


def user_turn(problem: str, instruction: str = DEFAULT_INSTRUCTION, fmt: SkillFormat | None = None,
              tree: SkillTree | None = None) -> str:
    """The user turn of training and evaluation alike: with ``fmt.tree_in_prompt`` the tree is shown before the
    question (so the ablation is evaluated on the prompt it trained on). Raises ValueError when the format asks
    for the tree and none is given."""
    tree_text = None
    if fmt is not None and fmt.tree_in_prompt:
        if tree is None:
            raise ValueError("skill_format.tree_in_prompt needs a skill tree")
        tree_text = tree_as_text(tree, fmt)
    return user_message(problem, instruction, tree_text)


def render_prompt(tokenizer, user_text: str, enable_thinking: bool = True, system: str | None = None) -> str:
    """The chat-templated prompt text ending with the assistant generation prompt.

    ``enable_thinking`` is passed to templates that know it (Qwen3) and ignored by the others.
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )


def end_of_turn_token(tokenizer) -> str:
    """The token that closes an assistant turn: ``<|im_end|>`` for ChatML models (Qwen3, SmolLM2), else EOS.
    Raises ConfigError when the tokenizer has neither."""
    # one token lookup: get_vocab() copies the whole vocabulary (151,936 entries for Qwen3, about 0.1 s), and the
    # datamodule asks once per re-selected example
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if im_end is not None and (im_end != tokenizer.unk_token_id or tokenizer.unk_token == "<|im_end|>"):
        return "<|im_end|>"
    if tokenizer.eos_token is None:
        name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        raise ConfigError(f"{name} has neither <|im_end|> nor an eos_token, so an assistant turn cannot be closed; "
                          "set data.tokenizer to the chat model's tokenizer, or add \"eos_token\" to its "
                          "tokenizer_config.json")
    return tokenizer.eos_token


def label_chain(chain: Sequence[str], fmt: SkillFormat, tree: SkillTree | None = None) -> Chain:
    chain = tuple(chain)
    if fmt.mode == "topic":
        chain = chain[:1]
    elif fmt.mode == "leaf":
        chain = chain[-1:]
    elif fmt.mode == "window":
        end = None if fmt.depth_end is None else fmt.depth_end + 1
        chain = chain[fmt.depth_start : end]
    if fmt.use_display_names and tree is not None:
        chain = tuple(tree.display(n) for n in chain)
    return chain


def skill_block(chains: Sequence[Sequence[str]], fmt: SkillFormat, tree: SkillTree | None = None) -> str:
    """``Skills:`` then one label per line, ending with a newline; empty when the mode is off or, with the
    project preset, without chains (the paper preset writes an empty block then).

    Labels that become identical after shortening (two leaves of one topic in ``topic`` mode) are written once.
    """
    if fmt.mode == "off":
        return ""
    if not chains:
        return fmt.header + "\n\n" if fmt.preset == "paper" else ""
    labels: list[str] = []
    for c in chains:
        text = format_chain(label_chain(c, fmt, tree))
        if text and text not in labels:
            labels.append(text)
    if not labels:
        return fmt.header + "\n\n" if fmt.preset == "paper" else ""
    return fmt.header + "\n" + "\n".join(labels) + "\n"


def parse_skill_block(text: str, fmt: SkillFormat | None = None, tree: SkillTree | None = None) -> list[Chain] | None:
    """The inverse of ``skill_block``: the chains of the block an output starts with (one label per line after
    ``fmt.header``, before ``<think>``), in tree names, or None when the output does not start with the header.

    With ``fmt.use_display_names`` (and a tree) display names are mapped back to tree names: a label is first
    walked down from the root (exact for chains that start at a topic), else each name is looked up among the
    display names that belong to one tree name only; a name that is not a display name stays as written.
    """
    fmt = fmt or SkillFormat()
    stripped = text.lstrip()
    if not stripped.startswith(fmt.header):
        return None
    body = stripped[len(fmt.header):]
    end = body.find("<think>")
    if end >= 0:
        body = body[:end]
    chains: list[Chain] = []
    for line in body.splitlines():
        line = line.strip()
        if not line:
            if chains:
                break
            continue
        if len(line) > 300:  # prose, not a label: the block has ended
            break
        chain = parse_chain(line)
        if chain and fmt.use_display_names and tree is not None:
            chain = _tree_names(chain, tree)
        if chain and chain not in chains:
            chains.append(chain)
    return chains


def _tree_names(chain: Chain, tree: SkillTree) -> Chain:
    node, walked = tree.root, []
    for label in chain:  # a chain from the root: match each level among the children's display names
        match = [c for c in node.children if tree.display(c.name) == label or c.name == label]
        if len(match) != 1:
            break
        node = match[0]
        walked.append(node.name)
    else:
        return tuple(walked)
    owners: dict[str, set[str]] = {}
    for name, shown in tree.display_names.items():
        owners.setdefault(shown, set()).add(name)
    return tuple(next(iter(owners[n])) if len(owners.get(n, ())) == 1 else n for n in chain)


def assistant_target(trace: str, chains: Sequence[Sequence[str]] = (), fmt: SkillFormat | None = None,
                     tree: SkillTree | None = None) -> str:
    """The trained response: the optional skill block, then the full teacher trace unchanged."""
    fmt = fmt or SkillFormat(mode="off")
    return skill_block(chains, fmt, tree) + trace


def tree_as_text(tree: SkillTree, fmt: SkillFormat | None = None) -> str:
    lines: list[str] = []

    def rec(node, depth):
        for c in node.children:
            name = tree.display(c.name) if fmt and fmt.use_display_names else c.name
            lines.append("  " * depth + "- " + name)
            rec(c, depth + 1)

    rec(tree.root, 0)
    return "\n".join(lines)


def final_solution(trace: str) -> str:
    """The written solution of a reasoning trace: the text after the last ``</think>`` (the whole text if none)."""
    idx = trace.rfind("</think>")
    return trace[idx + len("</think>"):].strip() if idx >= 0 else trace.strip()
