"""Tokenised SFT examples and the global batch plan.

A training step is a fixed number of *examples* (the paper's effective batch is 8), never a token budget. The plan
for an epoch is made globally, identically on every rank: shuffle, cut into steps, give each rank the same number of
examples per step (balanced by length), split each rank's share into the same number of micro-batches. Every rank
therefore runs the same number of micro-batches (unequal counts would hang collectives), and each micro-batch
carries the step's global count of supervised tokens so that the loss can be normalised exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

# the batch contract lives in skill_distill.batch_contract (the model imports it from there); re-exported here for
# the data side's callers
from skill_distill.batch_contract import (  # noqa: F401
    IGNORE_INDEX,
    MODEL_INPUTS,
    PACKED_BOUNDARIES,
    SHARED_PREFIX,
    SharedPrefixLayout,
    TokenizedExample,
    build_example,
    encode_example,
)
from skill_distill.io import ConfigError


def _balanced_split(indices: Sequence[int], lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Split ``indices`` into ``parts`` groups of equal size, balancing total length (longest first, greedy)."""
    size = len(indices) // parts
    order = sorted(indices, key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for i in order:
        g = min((p for p in range(parts) if len(groups[p]) < size), key=lambda p: (loads[p], p))
        groups[g].append(i)
        loads[g] += lengths[i]
    return groups


def plan_epoch(lengths: Sequence[int], examples_per_step: int, world_size: int, micro_batches_per_step: int,
               seed: int, epoch: int, shuffle: bool = True) -> list[list[list[list[int]]]]:
    """The global plan of one epoch: ``plan[step][rank][micro_batch] -> example indices``.

    The last incomplete step is dropped (a different remainder each epoch when shuffling).
    """
    per_rank, rem = divmod(examples_per_step, world_size)
    if rem or per_rank % micro_batches_per_step:
        raise ConfigError(
            f"examples_per_step={examples_per_step} must be divisible by world_size ({world_size}) x "
            f"accumulate_grad_batches ({micro_batches_per_step}); change data.examples_per_step or "
            "trainer.accumulate_grad_batches")
    n = len(lengths)
    order = np.arange(n)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    plan = []
    for s in range(n // examples_per_step):
        step = [int(i) for i in order[s * examples_per_step:(s + 1) * examples_per_step]]
        ranks = _balanced_split(step, lengths, world_size)
        plan.append([_balanced_split(r, lengths, micro_batches_per_step) for r in ranks])
    return plan


class StepBatchSampler:
    """Yields this rank's micro-batches (lists of example indices) of the epoch plan, in order.

    Deterministic given (seed, epoch), so torchdata's StatefulDataLoader resumes mid-epoch exactly by
    fast-forwarding the number of micro-batches already yielded. Lightning calls ``set_epoch``.
    """

    def __init__(self, lengths: Sequence[int], supervised: Sequence[int], examples_per_step: int, world_size: int,
                 rank: int, micro_batches_per_step: int, seed: int = 42, shuffle: bool = True):
        self.lengths = list(lengths)
        self.supervised = list(supervised)
        self.examples_per_step = examples_per_step
        self.world_size = world_size
        self.rank = rank
        self.micro_batches_per_step = micro_batches_per_step
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        plan_epoch(self.lengths, examples_per_step, world_size, micro_batches_per_step, seed, 0, shuffle)  # validate

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> StepBatchSampler:
        # Lightning reshuffles through ``loader.batch_sampler.sampler.set_epoch``; this sampler is its own
        return self

    def steps_per_epoch(self) -> int:
        return len(self.lengths) // self.examples_per_step

    def __len__(self) -> int:
        return self.steps_per_epoch() * self.micro_batches_per_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        """Items are (example index, global supervised tokens of the step), so each micro-batch can normalise its
        loss by the whole step's token count without a collective."""
        plan = plan_epoch(self.lengths, self.examples_per_step, self.world_size, self.micro_batches_per_step,
                          self.seed, self.epoch, self.shuffle)
        for step in plan:
            step_tokens = sum(self.supervised[i] for rank in step for mb in rank for i in mb)
            for mb in step[self.rank]:
                yield [(i, step_tokens) for i in mb]


class ExampleDataset(torch.utils.data.Dataset):
    """Map-style view of tokenised examples, indexed by the (index, step tokens) items of StepBatchSampler."""

    def __init__(self, examples: Sequence[TokenizedExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key):
        i, step_tokens = key if isinstance(key, tuple) else (key, None)
        return self.examples[i], step_tokens


class SFTCollator:
    """Turns a micro-batch of TokenizedExamples into model inputs.

    packed: one row, sequences concatenated, ``position_ids`` restarting at 0 per sequence, no attention mask
    (HF models derive the block-diagonal causal mask from ``position_ids``; ``use_cache`` must be False). The
    boundaries are also given once per batch as cumulative lengths (``cu_seq_lens_q/k``, int32, starting at 0) and
    the longest sequence (``max_length_q/k``, int), so attention never re-derives them in every layer.
    padded: right-padded rows with an attention mask. Both give the same loss.
    """

    def __init__(self, pad_token_id: int, packing: bool = True):
        self.pad_token_id = pad_token_id
        self.packing = packing

    def __call__(self, items: list[tuple[TokenizedExample, int | None]]) -> dict:
        exs = [e for e, _ in items]
        batch = self.collate(exs)
        step_tokens = items[0][1]
        # without a step plan (validation) a micro-batch is normalised by its own tokens
        batch["step_num_tokens"] = torch.tensor(batch["num_tokens"].item() if step_tokens is None else step_tokens)
        return batch

    def collate(self, exs: Sequence[TokenizedExample]) -> dict:
        if self.packing:
            input_ids = torch.tensor([t for e in exs for t in e.input_ids]).unsqueeze(0)
            labels = torch.tensor([t for e in exs for t in e.labels]).unsqueeze(0)
            position_ids = torch.tensor([p for e in exs for p in range(len(e.input_ids))]).unsqueeze(0)
            lengths = [len(e.input_ids) for e in exs]
            cu_seq_lens = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32)
            batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
                     "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
                     "max_length_q": max(lengths), "max_length_k": max(lengths)}
        else:
            width = max(len(e.input_ids) for e in exs)
            input_ids = torch.full((len(exs), width), self.pad_token_id)
            labels = torch.full((len(exs), width), IGNORE_INDEX)
            attention_mask = torch.zeros((len(exs), width), dtype=torch.long)
            for r, e in enumerate(exs):
                n = len(e.input_ids)
                input_ids[r, :n] = torch.tensor(e.input_ids)
                labels[r, :n] = torch.tensor(e.labels)
                attention_mask[r, :n] = 1
            batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        batch["example_ids"] = [e.example_id for e in exs]
        batch["num_tokens"] = torch.tensor(sum(e.num_supervised for e in exs))
        return batch


def pack_shared_prefix(groups: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]) -> dict:
    """One packed row of prompts each followed by its completions, every prompt held once: for a prompt p with
    completions c_1..c_n, the row holds p without its last token, then per completion that last token followed by
    c_i (positions continuing from the prompt's), so each completion is an ordinary pre-shifted sequence (its first
    label, c_i's first token, sits at the prompt's last position) that attends to the shared prompt part
    (``SharedPrefixLayout``). Supervised positions come in the order of ``groups`` and their completions, as in the
    plain packing of every (prompt, completion) pair; the prompt's computation is paid once instead of n times.
    Needs ``attn_implementation: sdpa_packed`` (the one attention function that reads the layout)."""
    ids, labels, positions, lengths, prefix_start, prefix_len = [], [], [], [], [], []
    supervised = 0
    for prompt, completions in groups:
        if not prompt:
            raise ValueError("pack_shared_prefix: an empty prompt (the completions' first label needs a position)")
        head, last = list(prompt[:-1]), prompt[-1]
        start = len(ids)
        if head:
            ids += head
            labels += [IGNORE_INDEX] * len(head)
            positions += range(len(head))
            lengths.append(len(head))
            prefix_start.append(start)
            prefix_len.append(0)
        for completion in completions:
            ids += [last, *completion]
            labels += [*completion, IGNORE_INDEX]
            positions += range(len(head), len(head) + 1 + len(completion))
            lengths.append(1 + len(completion))
            prefix_start.append(start)
            prefix_len.append(len(head))
            supervised += len(completion)
    return {"input_ids": torch.tensor(ids).unsqueeze(0), "labels": torch.tensor(labels).unsqueeze(0),
            "position_ids": torch.tensor(positions).unsqueeze(0),
            SHARED_PREFIX: SharedPrefixLayout(lengths, prefix_start, prefix_len),
            "num_tokens": torch.tensor(supervised)}
