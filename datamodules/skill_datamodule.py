"""SkillDataModule: corpus -> (selection) -> (skill-aware formatting) -> tokenised examples -> planned batches.

Data flows one way: the corpus and, for skill-based strategies, the attribution and the student profile go in;
a selection manifest (kept in the run directory, reused on resume) and tokenised, step-planned micro-batches
come out. Selection and formatting are plain functions in ``skill_distill.selection`` / ``skill_distill.formatting``.

What each epoch trains on is the data module's own state: epoch 0 is the selection (the manifest), and the closed
loop hands over a re-selected epoch's ids with ``use_selection`` (kept in ``state_dict``, so a resumed run trains on
them). ``epoch_ids`` / ``epoch_examples`` read an epoch's selection back (ids; corpus rows with their training
prompt and skill chains), e.g. for a stage that draws its prompts from the current selection.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from torchdata.stateful_dataloader import StatefulDataLoader

from datamodules.batching import ExampleDataset, SFTCollator, StepBatchSampler
from skill_distill import assets
from skill_distill.batch_contract import TokenizedExample, tokenize_example
from skill_distill.corpus import CorpusFields, Example, load_corpus
from skill_distill.formatting import (
    DEFAULT_INSTRUCTION,
    SkillFormat,
    end_of_turn_token,
    render_prompt,
    user_turn,
)
from skill_distill.io import ConfigError, DataError
from skill_distill.reselection import ReselectionConfig
from skill_distill.run_layout import RunLayout
from skill_distill.selection import SelectionConfig
from skill_distill.skill_tree import Chain, SkillTree

log = logging.getLogger(__name__)


class RunDataCallback:
    """A callback that depends on what the data module trains on; the data module looks for these among the
    trainer's callbacks before it selects (it cannot import the callbacks package, which imports this module)."""

    reselects_epochs: bool = False
    """True for the callback that re-selects epochs (``callbacks.ReselectionCallback``): data.reselection needs it."""

    def evaluation_problems(self) -> list[str]:
        """Problem texts this callback evaluates on, other than the held-out corpus (never in a profiling slice)."""
        return []


@dataclass(frozen=True)
class SelectedExample:
    """One example an epoch trains on, as the student sees it (``SkillDataModule.epoch_examples``)."""

    example: Example
    """The corpus row: id, problem, teacher trace, reference answer."""
    prompt: str
    """The chat-rendered user turn the example is trained with (instruction, enable_thinking, tree in prompt)."""
    chains: tuple[Chain, ...]
    """Its skill chains in the attribution (empty without one)."""

@dataclass(frozen=True)
class EvalContext:
    """What an in-training evaluation needs to know of the run's data, so it prompts and reads the model exactly as
    the training data was written (``SkillDataModule.eval_context``)."""

    val_corpus: str | None
    """The held-out corpus (same fields as the training corpus), or None."""
    fields: CorpusFields
    tree: str | None
    display_names: str | None
    attribution: str | None
    instruction: str
    enable_thinking: bool
    skill_format: SkillFormat
    skill_tree: SkillTree | None = None
    """The loaded tree (None before ``setup`` or without ``data.tree``)."""
    chains: Mapping[str, Sequence[Chain]] = field(default_factory=dict)
    """Example id -> skill chains of the attribution (pool and profiling slice)."""
    profiling_slice: tuple[Example, ...] = ()
    """Closed loop: the problems the student is re-profiled on (never trained on)."""


class SkillDataModule(L.LightningDataModule):
    """Supervised fine-tuning data for skill-aware distillation.

    Args:
        corpus: teacher corpus (.jsonl/.json/.parquet path or HF dataset name).
        tokenizer: tokenizer name or path (``asset:qwen3-tokenizer`` for the offline Qwen3 files).
        fields: which corpus fields hold id, problem, trace, answer, pass rate.
        split: dataset split when ``corpus`` is an HF dataset name.
        tree: skill tree JSON (needed for skill strategies and skill-aware formatting).
        attribution: attribution JSONL ({"id", "chains"}) of the corpus.
        profile: student profile JSON (per-node accuracy) for the ``skill`` strategy.
        verdicts: the profile's per-example verdicts JSONL, for correctness filters.
        display_names: optional long-name -> short-name map for the tree.
        selection: which examples to train on (``skill_distill.selection.SelectionConfig``; ``all`` trains on
            the whole corpus).
        skill_format: how the skill block is written before the trace (``mode: off`` is plain SFT).
        instruction: the instruction line of the user turn.
        enable_thinking: passed to chat templates that know it (Qwen3); thinking on is the paper's setting.
        max_length: maximum tokens per example (prompt + response); longer responses are truncated and counted.
        examples_per_step: examples per optimizer step across all ranks (the effective batch; paper: 8). Each rank
            gets ``examples_per_step / world_size`` per step, in ``accumulate_grad_batches`` micro-batches.
        packing: lay a micro-batch out padding-free (concatenated, ``position_ids`` reset). False pads instead;
            the loss is the same, padding only costs time.
        shuffle: reshuffle the examples every epoch (seeded by ``seed`` and the epoch).
        seed: data order seed.
        val_corpus: optional held-out corpus (same fields) for a validation loss.
        val_micro_batch_size: examples per validation micro-batch.
        num_workers: dataloader workers (0: collation is cheap, tokenisation happens once in ``setup``).
        reselection: closed-loop re-selection of each epoch's examples from an updated profile
            (``skill_distill.reselection.ReselectionConfig``; off by default, the paper's single selection). When
            on, the profiling slice is kept out of the eligible pool and ``callbacks.ReselectionCallback`` must run.
    """

    def __init__(
        self,
        corpus: str,
        tokenizer: str,
        fields: CorpusFields = CorpusFields(),
        split: str = "train",
        tree: str | None = None,
        attribution: str | None = None,
        profile: str | None = None,
        verdicts: str | None = None,
        display_names: str | None = None,
        selection: SelectionConfig = SelectionConfig(strategy="all"),
        skill_format: SkillFormat = SkillFormat(mode="off"),
        instruction: str = DEFAULT_INSTRUCTION,
        enable_thinking: bool = True,
        max_length: int = 8192,
        examples_per_step: int = 8,
        packing: bool = True,
        shuffle: bool = True,
        seed: int = 42,
        val_corpus: str | None = None,
        val_micro_batch_size: int = 4,
        num_workers: int = 0,
        reselection: ReselectionConfig = ReselectionConfig(),
    ):
        super().__init__()
        if max_length < 16:
            raise ConfigError(f"data.max_length must be >= 16, got {max_length}")
        if examples_per_step < 1:
            raise ConfigError(f"data.examples_per_step must be >= 1, got {examples_per_step}")
        reselection.validate(selection, tree, attribution)
        needs_chains = selection.strategy == "skill" or skill_format.mode != "off"
        if needs_chains and not (tree and attribution):
            raise ConfigError("data.tree and data.attribution are required for selection.strategy=skill "
                             "or a skill_format.mode other than off")
        if skill_format.tree_in_prompt and not tree:
            raise ConfigError("data.skill_format.tree_in_prompt: true shows the skill tree in the prompt: "
                              "set data.tree")
        self.save_hyperparameters()
        self.corpus, self.tokenizer_name, self.fields, self.split = corpus, tokenizer, fields, split
        self.tree_path, self.attribution_path, self.profile_path = tree, attribution, profile
        self.verdicts_path, self.display_names = verdicts, display_names
        self.selection, self.skill_format = selection, skill_format
        self.instruction, self.enable_thinking = instruction, enable_thinking
        self.max_length, self.examples_per_step, self.packing = max_length, examples_per_step, packing
        self.shuffle, self.seed = shuffle, seed
        self.val_corpus, self.val_micro_batch_size = val_corpus, val_micro_batch_size
        self.num_workers = num_workers
        self.train_examples: list[TokenizedExample] = []
        self.val_examples: list[TokenizedExample] = []
        self.stats: dict = {}
        self._tokenizer = None
        self._tree = None
        self._chains: dict = {}
        self.reselection = reselection
        self.profiling_slice: list[Example] = []
        """Closed loop only: the problems the student is re-profiled on (never trained on)."""
        self.eligible_pool: list[Example] = []
        """Closed loop only: the pool without the profiling slice, which every epoch is drawn from."""
        self._extra_fingerprints: dict[str, str] = {}
        self._train_loader: StatefulDataLoader | None = None
        self._first_ids: list[str] = []
        """Epoch 0's ids after tokenisation (the selection's order)."""
        self._reselected: dict[int, list[str]] = {}
        """Closed loop: epoch -> the ids it trains on, for every re-selected epoch (checkpointed)."""
        self._examples_by_id: dict[str, Example] = {}
        """Every example an epoch may train on (the selection, or the eligible pool of the closed loop)."""

    # ---- pieces ---------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = assets.load_tokenizer(self.tokenizer_name, "data.tokenizer")
        return self._tokenizer

    def _load_tree_and_chains(self) -> None:
        if self._tree is not None or not self.tree_path:
            return
        from skill_distill.skill_tree import SkillTree

        self._tree = SkillTree.load(self.tree_path, self.display_names)
        if self.attribution_path:
            from skill_distill.skill_stats import load_attribution

            self._chains = load_attribution(self.attribution_path, self._tree)

    def select(self, examples: list[Example]) -> list[Example]:
        """Apply the selection strategy; with a run directory, reuse (and verify) a saved manifest."""
        config = self.selection
        if config.strategy == "all":
            return examples
        from skill_distill import selection as sel

        inputs = {"corpus": self.corpus, "tree": self.tree_path, "attribution": self.attribution_path,
                  "profile": self.profile_path, "verdicts": self.verdicts_path}
        fingerprints = {k: sel.fingerprint_file(v) for k, v in inputs.items()
                        if v and Path(assets.resolve(v)).is_file()}  # an HF dataset name has no file
        fingerprints.update(self._extra_fingerprints)
        manifest = self._manifest_path()
        if manifest is not None and manifest.exists():
            ids = sel.load_manifest(manifest, fingerprints, config)
            log.info("reusing selection manifest %s (%d examples)", manifest, len(ids))
        else:
            node_accuracy = judged = raw_accuracy = None
            if self.profile_path:
                node_accuracy, judged = sel.read_profile_nodes(self.profile_path, self._tree, config.profile_value)
                if config.profile_value != "accuracy":
                    raw_accuracy, _ = sel.read_profile_nodes(self.profile_path, self._tree)
            result = sel.select(
                config, [e.id for e in examples], self._chains, self._tree, node_accuracy=node_accuracy,
                judged_by_node=judged,
                correct_by_id=sel.read_mean_correctness(self.verdicts_path) if self.verdicts_path else None,
                pass_rate_by_id={e.id: e.pass_rate for e in examples}, source=self.attribution_path)
            ids = list(result.ids)
            warning = sel.result_warning(result, config, raw_accuracy)
            if warning and self._is_global_zero():
                log.warning(warning)
            for note in result.notes:  # e.g. profile leaves without a judged example: said, not only in the manifest
                log.warning("selection: %s", note)
            if manifest is not None and self._is_global_zero():
                from skill_distill.decontamination import read_counts

                sel.write_manifest(manifest, result, config, fingerprints, decontamination=read_counts(self.corpus))
        by_id = {e.id: e for e in examples}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DataError(f"selection manifest names {len(missing)} ids absent from {self.corpus} "
                            f"(e.g. {missing[:3]}); "
                            "the corpus changed: delete the manifest or use a new run directory")
        return [by_id[i] for i in ids]

    def _load(self, source: str, role: str) -> list[Example]:
        try:
            return load_corpus(source, self.fields, self.split)
        except DataError as e:
            raise DataError(f"{role}: {e}") from None

    def _manifest_path(self) -> Path | None:
        return RunLayout.of(self.trainer).manifest if self.trainer is not None else None

    def eval_context(self) -> EvalContext:
        """The typed view an evaluation callback reads (held-out set, tree, prompt settings, skill format)."""
        return EvalContext(val_corpus=self.val_corpus, fields=self.fields, tree=self.tree_path,
                           display_names=self.display_names, attribution=self.attribution_path,
                           instruction=self.instruction, enable_thinking=self.enable_thinking,
                           skill_format=self.skill_format, skill_tree=self._tree, chains=self._chains,
                           profiling_slice=tuple(self.profiling_slice))

    def _is_global_zero(self) -> bool:
        return self.trainer is None or self.trainer.is_global_zero

    def format_and_tokenize(self, examples: list[Example]) -> tuple[list[TokenizedExample], dict]:
        eot = end_of_turn_token(self.tokenizer)
        out, dropped, truncated = [], 0, 0
        for e in examples:
            t = tokenize_example(self.tokenizer, e, self.instruction, self.enable_thinking, self.max_length,
                                 self.skill_format, self._tree, self._chains, end_of_turn=eot)
            if t is None:
                dropped += 1
                continue
            truncated += t.truncated
            out.append(t)
        stats = {"examples": len(out), "prompt_too_long_dropped": dropped, "truncated": truncated,
                 "supervised_tokens": sum(t.num_supervised for t in out), "tokens": sum(len(t.input_ids) for t in out)}
        return out, stats

    def _prompt(self, e: Example) -> str:
        return render_prompt(self.tokenizer, user_turn(e.problem, self.instruction, self.skill_format, self._tree),
                             self.enable_thinking)

    # ---- Lightning hooks ------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_examples and (self.val_examples or not self.val_corpus):
            return
        self._load_tree_and_chains()
        # the validation corpus is read first: a bad one fails before the selection manifest is written
        val = self._load(self.val_corpus, "data.val_corpus (the validation corpus)") \
            if self.val_corpus and stage in (None, "fit", "validate") else None
        if stage in (None, "fit"):
            examples = load_corpus(self.corpus, self.fields, self.split)
            if self.reselection.enabled:
                examples = self._carve_profiling_slice(examples)
            examples = self.select(examples)
            self._examples_by_id = {e.id: e for e in (self.eligible_pool or examples)}
            self.train_examples, self.stats["train"] = self.format_and_tokenize(examples)
            self._first_ids = [t.example_id for t in self.train_examples]
            if not self.train_examples:
                raise DataError(f"{self.corpus}: no training example left after selection and length filtering")
            if self.stats["train"]["truncated"]:
                log.warning("%d of %d training examples truncated to max_length=%d",
                            self.stats["train"]["truncated"], len(self.train_examples), self.max_length)
        if val is not None:
            self.val_examples, self.stats["val"] = self.format_and_tokenize(val)

    # ---- closed-loop re-selection (docs/METHOD.md §4; skill_distill.reselection) -----------------------------
    def _carve_profiling_slice(self, pool: list[Example]) -> list[Example]:
        """Set ``profiling_slice`` (carved, or read from ``reselection.slice`` and checked) and return the pool
        without it. Problems are compared by normalised text; the held-out corpus and the problems of every
        evaluation callback's benchmarks are never in the slice."""
        import hashlib

        from skill_distill import reselection as rs

        cfg = self.reselection
        if self.trainer is not None:
            if not any(isinstance(cb, RunDataCallback) and cb.reselects_epochs for cb in self.trainer.callbacks):
                raise ConfigError("data.reselection.every_n_epochs > 0 needs the callback that re-profiles the "
                                  "student: add callbacks.ReselectionCallback to trainer.callbacks")
        exclude = {rs.normalise_problem(p) for p in self._test_problems()}
        if cfg.slice:
            self.profiling_slice = load_corpus(cfg.slice, self.fields, self.split)
            rs.check_slice(self.profiling_slice, self._chains, self._tree, pool, cfg.slice, exclude)
        else:
            self.profiling_slice, notes = rs.carve_slice(pool, self._chains, self._tree, cfg.per_leaf, cfg.seed,
                                                         exclude)
            for note in notes:
                log.warning("profiling slice: %s", note)
        taken = {rs.normalise_problem(e.problem) for e in self.profiling_slice}
        self.eligible_pool = [e for e in pool if rs.normalise_problem(e.problem) not in taken]
        digest = hashlib.sha256("\x1e".join(sorted(taken)).encode()).hexdigest()
        self._extra_fingerprints = {"profiling_slice": digest}
        log.info("closed-loop re-selection: %d profiling problems kept out of the %d-problem pool",
                 len(self.profiling_slice), len(pool))
        return self.eligible_pool

    def _test_problems(self) -> list[str]:
        """Problem texts of the held-out corpus and of every evaluation callback's sets (the profiling slice must
        not contain them)."""
        texts = [e.problem for e in load_corpus(self.val_corpus, self.fields, self.split)] if self.val_corpus else []
        if self.trainer is None:
            return texts
        for cb in self.trainer.callbacks:  # SkillEvalCallback: its sets but the held-out corpus
            if isinstance(cb, RunDataCallback):
                texts += cb.evaluation_problems()
        return texts

    def reselect_epoch(self, epoch: int, node_accuracy: dict, judged: dict, previous: list[str] | None = None):
        """Draw epoch ``epoch``'s examples (``skill_distill.reselection.reselect``) from ``eligible_pool`` with as
        many examples after tokenisation as epoch 0 has. Returns (SelectionResult, ids); ``use_selection`` trains
        on them."""
        from skill_distill import reselection as rs

        by_id = {e.id: e for e in self.eligible_pool}
        tokenised: dict[str, TokenizedExample | None] = {}

        def accept(ids: list[str]) -> list[bool]:
            todo = [i for i in ids if i not in tokenised]
            for i in todo:
                done, _ = self.format_and_tokenize([by_id[i]])
                tokenised[i] = done[0] if done else None
            return [tokenised[i] is not None for i in ids]

        result, ids = rs.reselect(self.selection, epoch, [e.id for e in self.eligible_pool], self._chains,
                                  self._tree, node_accuracy, judged, need=self.epoch_size, accept=accept,
                                  previous=previous, keep_share=self.reselection.keep_share,
                                  source=self.attribution_path)
        return result, ids

    @property
    def epoch_size(self) -> int:
        """Training examples per epoch (epoch 0's after tokenisation; every re-selected epoch has as many)."""
        return int(self.stats["train"]["examples"])

    # ---- what each epoch trains on -----------------------------------------------------------------------------
    def use_selection(self, epoch: int, ids: Sequence[str]) -> None:
        """Train epoch ``epoch``, and the epochs after it until another selection, on the examples ``ids`` (as
        many as epoch 0 has). Kept in the checkpointed state. Call it when ``epoch`` is the next epoch to train (an
        epoch-end or train-start hook, before the epoch's iterator is created): the live loader's dataset and step
        sampler switch in place, so the step plan, ``steps_per_epoch`` and the LR schedule are unchanged."""
        if epoch < 1:
            raise ValueError(f"use_selection: epoch {epoch}; epoch 0 trains on the selection manifest")
        self._reselected[epoch] = list(ids)
        self._train_on(epoch)

    def epoch_ids(self, epoch: int) -> list[str]:
        """The ids epoch ``epoch`` trains on, in the selection's order: its re-selection, else the latest earlier
        one, else epoch 0's selection (empty before ``setup``)."""
        chosen = max((k for k in self._reselected if k <= epoch), default=None)
        return list(self._first_ids if chosen is None else self._reselected[chosen])

    def reselected_epochs(self) -> list[int]:
        """The epochs the closed loop re-selected so far (each has ``RunLayout.selection_for_epoch``)."""
        return sorted(self._reselected)

    def epoch_examples(self, epoch: int) -> list[SelectedExample]:
        """The examples epoch ``epoch`` trains on, each with its training prompt and its skill chains."""
        out = []
        for i in self.epoch_ids(epoch):
            e = self._examples_by_id[i]
            out.append(SelectedExample(e, self._prompt(e), tuple(tuple(c) for c in self._chains.get(i, ()))))
        return out

    def _train_on(self, epoch: int) -> None:
        ids = self.epoch_ids(epoch)
        if [e.example_id for e in self.train_examples] == ids:
            return
        examples, _ = self.format_and_tokenize([self._examples_by_id[i] for i in ids])
        if len(examples) != len(self.train_examples):
            raise RuntimeError(f"re-selection made {len(examples)} examples for an epoch of {len(self.train_examples)}")
        self.train_examples[:] = examples
        if self._train_loader is not None:
            sampler = self._train_loader.batch_sampler
            sampler.lengths[:] = [len(e.input_ids) for e in examples]
            sampler.supervised[:] = [e.num_supervised for e in examples]

    def _world(self) -> tuple[int, int, int]:
        t = self.trainer
        if t is None:
            return 1, 0, 1
        return t.world_size, t.global_rank, t.accumulate_grad_batches

    def train_dataloader(self) -> StatefulDataLoader:
        if self._reselected and self.trainer is not None:  # a resumed run: the epoch's re-selected data
            self._train_on(self.trainer.fit_loop.epoch_progress.current.processed)
        world_size, rank, accumulation = self._world()
        sampler = StepBatchSampler(
            [len(e.input_ids) for e in self.train_examples], [e.num_supervised for e in self.train_examples],
            self.examples_per_step, world_size, rank, accumulation, self.seed, self.shuffle)
        if sampler.steps_per_epoch() == 0:
            raise DataError(f"{len(self.train_examples)} training examples make no full step of "
                            f"examples_per_step={self.examples_per_step}; lower examples_per_step or add data")
        self._train_loader = StatefulDataLoader(ExampleDataset(self.train_examples), batch_sampler=sampler,
                                                collate_fn=SFTCollator(self._pad_id(), self.packing),
                                                num_workers=self.num_workers)
        return self._train_loader

    def val_dataloader(self):
        return self.held_out_loader()

    def held_out_loader(self, ids: Collection[str] | None = None):
        """This rank's share of the tokenised held-out examples (all, or those whose id is in ``ids``: e.g. the
        problems an evaluation set kept) in collated micro-batches of ``val_micro_batch_size``; [] when none."""
        examples = self.val_examples if ids is None else [e for e in self.val_examples if e.example_id in ids]
        if not examples:
            return []
        world_size, rank, _ = self._world()
        mine = list(range(rank, len(examples), world_size))
        m = self.val_micro_batch_size
        batches = [[(i, None) for i in mine[k:k + m]] for k in range(0, len(mine), m)]
        return StatefulDataLoader(ExampleDataset(examples), batch_sampler=batches,
                                  collate_fn=SFTCollator(self._pad_id(), self.packing), num_workers=0)

    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def state_dict(self) -> dict:
        return {"stats": self.stats, "reselected": {str(k): v for k, v in self._reselected.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self._reselected = {int(k): list(v) for k, v in (state_dict.get("reselected") or {}).items()}
