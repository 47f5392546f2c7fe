"""What a training batch is, shared by the data side (``datamodules``) and the model side (``lightning_modules``)
so that neither imports the other, and by the ``teacher-logprobs`` stage, which must tokenise exactly as training.

One example becomes a ``TokenizedExample`` (``tokenize_example``: prompt and target tokenised apart, labels
pre-shifted). ``datamodules.batching.SFTCollator`` turns a micro-batch of them into a dict with the keys
``input_ids``, ``labels`` (IGNORE_INDEX where unsupervised), ``example_ids``, ``num_tokens`` (supervised tokens of the
micro-batch), ``step_num_tokens`` (of the whole optimizer step), and either ``attention_mask`` (padded) or
``position_ids`` + ``PACKED_BOUNDARIES`` (packed); the model's forward receives the ``MODEL_INPUTS`` among them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from skill_distill.formatting import SkillFormat, assistant_target, end_of_turn_token, render_prompt, user_turn

IGNORE_INDEX = -100  # the label of an unsupervised position (what transformers' and torch's losses ignore)
# the packed-sequence boundaries are the keyword arguments of transformers' flash-attention path
# (modeling_flash_attention_utils.FlashAttentionKwargs), read by sdpa_packed too
PACKED_BOUNDARIES = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
# a row whose sequences share a prefix held once (``SharedPrefixLayout``); only ``sdpa_packed`` reads it
SHARED_PREFIX = "shared_prefix"
MODEL_INPUTS = ("position_ids", "attention_mask", *PACKED_BOUNDARIES, SHARED_PREFIX)


@dataclass
class SharedPrefixLayout:
    """One packed row whose sequences share prefixes held once (``datamodules.batching.pack_shared_prefix``): the row
    is cut into ``lengths`` segments in row order; segment s attends causally to itself after the ``prefix_len[s]``
    row positions from ``prefix_start[s]`` (0: none). A prompt with its n completions becomes its prompt segment and n
    completion segments, so the prompt is computed once instead of n times, with the same result."""

    lengths: list[int]
    prefix_start: list[int]
    prefix_len: list[int]


@dataclass
class TokenizedExample:
    example_id: str
    input_ids: list[int]
    labels: list[int]
    """Already shifted: ``labels[t]`` is the token to predict at position ``t`` (IGNORE_INDEX where unsupervised).
    Pre-shifting per example keeps packed sequences from predicting across a boundary."""
    truncated: bool = False

    @property
    def num_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def encode_example(tokenizer, example_id: str, prompt_text: str, target_text: str,
                   max_length: int) -> TokenizedExample | None:
    """Tokenise prompt and target separately (as at inference, where the prompt is tokenised alone) and build
    shifted labels that supervise exactly the target tokens. Returns None if the prompt alone fills max_length."""
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target_text, add_special_tokens=False)["input_ids"]
    return build_example(example_id, prompt_ids, target_ids, max_length)


def build_example(example_id: str, prompt_ids: Sequence[int], target_ids: Sequence[int],
                  max_length: int) -> TokenizedExample | None:
    if len(prompt_ids) >= max_length:
        return None
    ids = list(prompt_ids) + list(target_ids)
    truncated = len(ids) > max_length
    ids = ids[:max_length]
    unshifted = [IGNORE_INDEX] * len(prompt_ids) + list(target_ids)
    unshifted = unshifted[: len(ids)]
    labels = unshifted[1:] + [IGNORE_INDEX]
    return TokenizedExample(example_id, ids, labels, truncated)


def tokenize_example(tokenizer, example, instruction: str, enable_thinking: bool, max_length: int,
                     skill_format: SkillFormat, tree=None, chains: Mapping[str, Sequence] | None = None,
                     end_of_turn: str | None = None) -> TokenizedExample | None:
    """One corpus example (``skill_distill.corpus.Example``) as training sees it: the rendered user turn as prompt,
    the skill block (unless ``skill_format.mode`` is off) + trace + end-of-turn token as target. None: the prompt
    alone fills ``max_length`` (training drops it). ``end_of_turn``: the tokenizer's, when already looked up."""
    prompt = render_prompt(tokenizer, user_turn(example.problem, instruction, skill_format, tree), enable_thinking)
    example_chains = (chains or {}).get(example.id, []) if skill_format.mode != "off" else []
    eot = end_of_turn if end_of_turn is not None else end_of_turn_token(tokenizer)
    target = assistant_target(example.trace, example_chains, skill_format, tree) + eot
    return encode_example(tokenizer, example.id, prompt, target, max_length)
