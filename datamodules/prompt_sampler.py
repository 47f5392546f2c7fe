"""Prompts for on-policy distillation, drawn from the datamodule's selection.

An on-policy step needs prompts, not traces: ``PromptSampler`` draws ``B`` of the selected examples per step, with
replacement, from a generator seeded by ``(seed, epoch, step)`` (so a resumed run draws the same prompts):

- ``uniform``: every selected example alike;
- ``skill``: the selection's own leaf weights (``target`` of ``skill_distill.selection.SelectionResult``, normalised
  ``w(s) = min(1/acc(s), w_max) ** T``): a leaf is drawn by its weight, then uniformly one of the selected examples
  that the selection drew through that leaf. Prompt leaves therefore follow the target exactly in expectation,
  whatever the budget (``tests/test_on_policy.py`` checks it with a chi-square test). With closed-loop re-selection
  the datamodule installs each epoch's examples and the sampler follows them.

``OnPolicyDataModule`` is ``SkillDataModule`` (the same corpus, selection, manifest and formatting) whose training
loader yields one item per optimizer step: the step's prompts (token ids of the rendered prompt, example id,
skill chains) and their teacher traces (for GKD's off-policy steps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules.skill_datamodule import SkillDataModule
from skill_distill.batch_contract import IGNORE_INDEX, TokenizedExample
from skill_distill.io import ConfigError, DataError, read_json
from skill_distill.run_layout import RunLayout
from skill_distill.skill_tree import format_chain

PromptWeighting = Literal["uniform", "skill"]


def prompt_length(example: TokenizedExample) -> int:
    """Tokens of the rendered prompt in a tokenised SFT example (labels are shifted: the first supervised label
    sits at the prompt's last position)."""
    for t, label in enumerate(example.labels):
        if label != IGNORE_INDEX:
            return t + 1
    return len(example.input_ids)


class PromptSampler:
    """Seeded draws of prompt indices from a selection (module docstring).

    ``example_ids``: the selected examples, in order; ``drawn_leaf``: per id, the leaf (any hashable name) the
    selection drew it through, or None; ``target``: leaf -> weight (need not be normalised). Without a target, or
    with ``weighting="uniform"``, draws are uniform over the examples.
    """

    def __init__(self, example_ids: Sequence[str], drawn_leaf: Mapping[str, object] | None = None,
                 target: Mapping[object, float] | None = None, weighting: PromptWeighting = "skill",
                 seed: int = 0):
        if weighting not in ("uniform", "skill"):
            raise ConfigError(f"prompt weighting {weighting!r}: use uniform or skill")
        if not example_ids:
            raise DataError("no selected example to draw prompts from")
        self.example_ids = list(example_ids)
        self.seed = int(seed)
        self.leaves: list[object] = []
        self.members: list[np.ndarray] = []
        self.probs: np.ndarray | None = None
        if weighting == "skill" and target and drawn_leaf:
            by_leaf: dict[object, list[int]] = {}
            for i, eid in enumerate(self.example_ids):
                leaf = drawn_leaf.get(eid)
                if leaf is not None and target.get(leaf, 0.0) > 0:
                    by_leaf.setdefault(leaf, []).append(i)
            if by_leaf:
                self.leaves = sorted(by_leaf, key=str)
                self.members = [np.asarray(by_leaf[leaf]) for leaf in self.leaves]
                weights = np.asarray([float(target[leaf]) for leaf in self.leaves])
                self.probs = weights / weights.sum()

    @property
    def leaf_probabilities(self) -> dict[object, float]:
        """The distribution prompts' leaves follow (empty for uniform draws)."""
        return {} if self.probs is None else dict(zip(self.leaves, self.probs.tolist(), strict=True))

    def draw(self, count: int, epoch: int, step: int) -> list[tuple[int, object]]:
        """``count`` (example index, leaf or None) pairs for step ``step`` of epoch ``epoch``."""
        rng = np.random.default_rng([self.seed, int(epoch), int(step)])
        if self.probs is None:
            return [(int(i), None) for i in rng.integers(len(self.example_ids), size=count)]
        picks = []
        for leaf_index in rng.choice(len(self.leaves), size=count, p=self.probs):
            members = self.members[leaf_index]
            picks.append((int(members[rng.integers(len(members))]), self.leaves[leaf_index]))
        return picks


@dataclass
class PromptItem:
    """One prompt of a step."""

    example_id: str
    prompt_ids: list[int]
    chains: list
    leaf: str | None
    example: TokenizedExample
    """The selected example itself (prompt and teacher trace), for off-policy steps."""


class _StepDataset(torch.utils.data.Dataset):
    """Item k: the prompts of step k of the current epoch (the epoch is read when the item is made)."""

    def __init__(self, data: OnPolicyDataModule, steps: int):
        self.data, self.steps = data, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, k: int) -> dict:
        return self.data.step_prompts(k)


class OnPolicyDataModule(SkillDataModule):
    """``SkillDataModule`` whose training loader yields one step's prompts per item (module docstring).

    Args (beyond SkillDataModule's; ``examples_per_step`` is the number of prompts B per optimizer step across
    all ranks):
        prompt_weighting: uniform | skill (the selection's leaf weights; uniform when the selection has none).
        steps_per_epoch: optimizer steps per epoch; None: selected examples / examples_per_step (an epoch then
            draws as many prompts as the selection holds).
    """

    def __init__(self, *args, prompt_weighting: PromptWeighting = "skill", steps_per_epoch: int | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if prompt_weighting not in ("uniform", "skill"):
            raise ConfigError(f"data.prompt_weighting={prompt_weighting!r}: use uniform or skill")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ConfigError(f"data.steps_per_epoch={steps_per_epoch}: must be >= 1 (or null)")
        self.prompt_weighting = prompt_weighting
        self.steps_per_epoch = steps_per_epoch
        self._sampler: PromptSampler | None = None
        self._sampler_key: tuple | None = None
        self._epoch_weights: dict[int, tuple[dict, dict]] = {}
        """Re-selected epoch -> (drawn leaf per id, leaf target) of its selection (kept in the checkpoint)."""

    def reselect_epoch(self, epoch: int, node_accuracy: dict, judged: dict, previous: list[str] | None = None):
        """SkillDataModule's re-selection, keeping the new selection's leaf weights: prompts of epoch ``epoch`` on are
        drawn by them (every rank computes the same re-selection, so no rank needs rank 0's record file)."""
        result, ids = super().reselect_epoch(epoch, node_accuracy, judged, previous)
        self._epoch_weights[epoch] = (
            {i: (None if c is None else format_chain(c)) for i, c in result.drawn_leaf.items()},
            {format_chain(c): float(w) for c, w in result.target.items()})
        return result, ids

    def selection_weights(self, epoch: int = 0) -> tuple[dict | None, dict | None]:
        """(drawn leaf per id, leaf target) of the selection epoch ``epoch`` trains on: the closed loop's latest
        re-selection up to ``epoch`` (``SkillDataModule.use_selection``), else the run's selection manifest; (None,
        None) without either."""
        chosen = max((k for k in self.reselected_epochs() if k <= epoch), default=None)
        if chosen is not None and chosen in self._epoch_weights:
            return self._epoch_weights[chosen]
        layout = RunLayout.of(self.trainer) if self.trainer is not None else None
        if layout is None:
            return None, None
        path = layout.manifest if chosen is None else layout.selection_for_epoch(chosen)
        if not path.is_file():
            return None, None
        record = read_json(path, "selection manifest" if chosen is None else "epoch selection")
        return record.get("drawn_leaf") or None, record.get("target") or None

    def prompt_sampler(self, epoch: int = 0) -> PromptSampler:
        """The sampler over the examples epoch ``epoch`` trains on (``epoch_ids``), by that selection's weights;
        rebuilt when the closed loop hands over another selection."""
        self._train_on(epoch)  # the epoch's examples installed (a no-op when they already are)
        ids = [e.example_id for e in self.train_examples]
        weights = self.selection_weights(epoch)
        if self._sampler is None or (ids, weights) != self._sampler_key:
            self._sampler = PromptSampler(ids, *weights, self.prompt_weighting, self.seed)
            self._sampler_key = (ids, weights)
        return self._sampler

    def step_prompts(self, step: int) -> dict:
        """The prompts of step ``step`` of the current epoch, as ``{"epoch", "step", "prompts": [PromptItem]}``."""
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        picks = self.prompt_sampler(epoch).draw(self.examples_per_step, epoch, step)
        items = []
        for index, leaf in picks:
            example = self.train_examples[index]
            items.append(PromptItem(example.example_id, example.input_ids[: prompt_length(example)],
                                    [list(c) for c in self._chains.get(example.example_id, [])],
                                    None if leaf is None else str(leaf), example))
        return {"epoch": epoch, "step": step, "prompts": items}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "prompt_weights": {str(k): list(v) for k, v in self._epoch_weights.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._epoch_weights = {int(k): tuple(v) for k, v in (state_dict.get("prompt_weights") or {}).items()}

    def train_dataloader(self) -> StatefulDataLoader:
        steps = self.steps_per_epoch or len(self.train_examples) // self.examples_per_step
        if steps < 1:
            raise DataError(f"{len(self.train_examples)} selected examples make no step of "
                            f"examples_per_step={self.examples_per_step}; lower it or set data.steps_per_epoch")
        # batch_size=None: the dataset's item is already one step; a stateful loader resumes mid-epoch exactly
        return StatefulDataLoader(_StepDataset(self, steps), batch_size=None, shuffle=False, num_workers=0,
                                  collate_fn=lambda item: item)
