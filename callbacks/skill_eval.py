"""Per-skill evaluation inside training: every N epochs (and optionally before training) the current weights are
exported, each rank generates its share of the evaluation requests with vLLM in a child process, and accuracy per
set and per skill is logged and reported (docs/METHOD.md §7).

The reported result of a run is its final evaluation (the final weights, as in the paper): nothing here picks a
"best" epoch. The final epoch is always evaluated, whatever ``every_n_epochs`` says.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from callbacks.checkpointing import EpochEndEvaluation, resumable_checkpoint
from callbacks.preemption import PreemptionCallback, is_final_epoch
from datamodules.skill_datamodule import EvalContext, RunDataCallback, SkillDataModule
from skill_distill.eval_sets import HELDOUT, PAPER_SUITE, BenchmarkSpec, SkillSource, resolve_specs
from skill_distill.generation.base import GenerationError, GenerationInterrupted, SamplingConfig
from skill_distill.generation.factory import BackendConfig, VLLMConfig
from skill_distill.grading import GradingConfig
from skill_distill.io import ConfigError
from skill_distill.run_layout import RunLayout

log = logging.getLogger(__name__)


@dataclass
class EvaluationRun:
    """One finished generation of an in-training evaluation, handed to its owner's report writer (rank 0)."""

    tag: str
    records: list[dict]
    """Every rank's graded samples, gathered."""
    summaries: dict
    """Per-set metrics, synced across ranks."""
    timings: dict
    """``export_s`` and ``generate_and_grade_s``."""
    t0: float
    """When the evaluation started (``time.time()``)."""
    out_dir: Path
    """Where its report goes (``<reports dir>/<tag>``)."""
    epoch: int
    """The epoch whose end the evaluated weights are from (the run's current epoch, or a pending evaluation's)."""
    training: dict
    """The last logged per-step training metrics of those weights (``last_step_metrics``)."""


class InTrainingEvaluation:
    """One evaluation of the weights being trained, on every rank (see ``SkillEvalCallback``): export, a vLLM child
    engine per rank (or tensor-parallel group) on its share of the requests, gathered and synced results, then the
    owner's report writer on rank 0. A stop signal during an interruptible evaluation leaves it ``pending``; a
    failure on any rank raises on every rank or is skipped (``on_error``). ``SkillEvalCallback`` and
    ``ReselectionCallback`` each hold one and set its ``loaded`` sets, ``tree``, ``prompt`` and ``skill_format`` in
    their ``setup``.
    """

    def __init__(self, owner: str, backend: BackendConfig, sampling: SamplingConfig, export_dtype: str | None,
                 keep_exports: bool, dirpath: str | None, on_error: str, timeout_s: float, grading: GradingConfig,
                 subdir: str | None = None):
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"{owner}.on_error must be 'raise' or 'skip', got {on_error!r}")
        # HF generate has no tensor parallelism: one engine per rank
        self.tensor_parallel_size = int(getattr(backend, "tensor_parallel_size", 1))
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"{owner}: backend.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if backend.kind == "openai":
            raise ConfigError(f"{owner} evaluates the weights being trained: use a VLLMConfig or HFConfig backend")
        self.owner = owner
        self.backend, self.sampling = backend, sampling
        self.export_dtype, self.keep_exports, self.dirpath, self.subdir = export_dtype, keep_exports, dirpath, subdir
        self.on_error, self.timeout_s = on_error, timeout_s
        self.grading = grading
        self.loaded: list = []
        """The evaluated sets (``LoadedBenchmark``)."""
        self.tree = None
        self.prompt: dict[str, Any] = {"enable_thinking": True, "instruction": None}
        self.skill_format = None
        self.pending: str | None = None
        """Tag of an evaluation still to run on the checkpointed weights: marked before an epoch-end evaluation
        starts (``mark_pending``), or left by a stop signal that interrupted it. The owner checkpoints it and runs
        it first after resumption."""
        self.pending_weights: dict = {}
        """What the pending evaluation's report records of its weights (``weights_now`` when it was marked)."""

    # ---- pending evaluations (checkpointed by the owner) ---------------------------------------------------------
    @staticmethod
    def weights_now(trainer) -> dict:
        """The epoch and the last logged training metrics of the current weights (a resumed run has neither)."""
        return {"epoch": trainer.current_epoch, "training": last_step_metrics(trainer)}

    def mark_pending(self, trainer, tag: str, weights: dict | None = None) -> None:
        """Record ``tag`` as pending on the current weights (before a checkpoint that precedes it)."""
        self.pending, self.pending_weights = tag, dict(weights if weights is not None else self.weights_now(trainer))

    def take_pending(self) -> tuple[str, dict]:
        """The pending evaluation's tag and weights (see ``pending_weights``); it is no longer pending."""
        tag, weights = self.pending, dict(self.pending_weights)
        if "epoch" not in weights:  # recorded by a stop signal before the weights were kept: tag epoch=<k> or <k>
            weights["epoch"] = int(tag.removeprefix("epoch="))
        self.pending, self.pending_weights = None, {}
        return tag, weights

    def state(self) -> dict:
        return {"pending": self.pending, "pending_weights": self.pending_weights}

    def load_state(self, state: dict) -> None:
        self.pending, self.pending_weights = state.get("pending"), dict(state.get("pending_weights") or {})

    def reports_dir(self, trainer) -> Path:
        """Where the reports go: ``dirpath`` inside the run directory when relative (default ``eval``)."""
        layout = RunLayout.of(trainer)
        root = layout.inside(self.dirpath, layout.eval_dir)
        return root / self.subdir if self.subdir else root

    def check_trainer(self, trainer) -> None:
        """ConfigError (one line) for a process-group timeout shorter than ``timeout_s``, or tensor-parallel groups
        that would span nodes."""
        tp = self.tensor_parallel_size
        if tp > 1 and max(1, trainer.num_devices) % tp:
            raise ConfigError(f"{self.owner}: backend.tensor_parallel_size={tp} must divide the devices per node "
                              f"({trainer.num_devices}): an engine's ranks must share one node")
        if trainer.world_size <= 1:
            return
        # a private member of DDPStrategy / ModelParallelStrategy: neither Lightning (2.6.6) nor torch.distributed
        # (2.13) has a public accessor for the timeout a strategy's process group was given
        # (tests/test_lightning_private_members.py fails when it goes)
        timeout = getattr(trainer.strategy, "_timeout", None)
        if timeout is not None and timeout.total_seconds() < self.timeout_s:
            raise ConfigError(
                f"{self.owner}: the process-group timeout ({timeout}) is shorter than the evaluation's time limit "
                f"timeout_s={self.timeout_s:.0f} s, so ranks waiting for the slowest one would be killed; set "
                f"trainer.strategy.init_args.timeout to e.g. \"{_hms(self.timeout_s * 1.2)}\", or lower timeout_s")

    def engine_slot(self, trainer) -> tuple[int, int, bool]:
        """(this rank's engine, number of engines, whether this rank runs it): tensor-parallel groups are
        consecutive global ranks, which lie on one node because ``tp`` divides the devices per node."""
        tp = self.tensor_parallel_size
        return trainer.global_rank // tp, max(1, trainer.world_size // tp), trainer.global_rank % tp == 0

    def _child_env(self, trainer, pl_module) -> dict[str, str]:
        """The engine's environment: the rank's GPU, or its group's GPUs; on CPU one core slice per engine worker."""
        from skill_distill.generation.vllm_backend import clean_child_env

        tp = self.tensor_parallel_size
        device = pl_module.device
        if device.type == "cuda":
            env = clean_child_env(os.environ)
            index = device.index if device.index is not None else torch.cuda.current_device()
            visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
            group = range(index, index + tp)  # this rank leads its group: the next tp - 1 devices are its peers'
            env["CUDA_VISIBLE_DEVICES"] = ",".join(visible[i] if i < len(visible) else str(i) for i in group)
            return env
        group = range(trainer.local_rank, trainer.local_rank + tp)  # one core slice per engine worker
        return clean_child_env(os.environ, cpu_cores=[rank_cores(r, max(1, trainer.num_devices)) for r in group])

    @staticmethod
    def _all_gather(trainer, obj: Any) -> list:
        import torch.distributed as dist

        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            out: list = [None] * dist.get_world_size()
            dist.all_gather_object(out, obj)
            return out
        return [obj]

    @staticmethod
    def _stop_requested(trainer) -> bool:
        return any(isinstance(cb, PreemptionCallback) and cb.received for cb in trainer.callbacks)

    @staticmethod
    def log_metrics(trainer, metrics: dict[str, float]) -> None:
        """Rank 0: log scalars to every Lightning logger at the current step, written at once."""
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()

    def run(self, trainer, pl_module, tag: str, write: Callable[[EvaluationRun], Any],
            interruptible: bool = False, weights: dict | None = None,
            score: Callable[[list[dict]], Any] | None = None) -> Any:
        """Run one evaluation on every rank; returns what ``write`` returned on rank 0 (the report), else None.

        ``interruptible``: a stop signal on this rank kills its engine; the evaluation is then recorded as pending
        on every rank and None returned. Raises GenerationError (every rank) when it failed on any rank, writing
        the report included, and ``on_error`` is raise. ``weights``: what the report records of the evaluated
        weights (a pending evaluation's, taken with ``take_pending``; default ``weights_now``). ``score``: called on
        every rank with that rank's own records once every rank's generation succeeded, before the records are
        gathered; it may add per-record values in place, which travel with the records to ``write`` (the KL on the
        student's own samples: a forward of the sharded models, i.e. a collective, so never on rank 0 alone).
        """
        weights = weights if weights is not None else self.weights_now(trainer)
        self.pending = None  # running now: only an interruption leaves it pending (the checkpoint before it says so)
        from skill_distill.evaluation import InSubprocess, compute_summaries, evaluate_model
        from skill_distill.formatting import DEFAULT_INSTRUCTION

        root = self.reports_dir(trainer)
        out_dir = root / tag
        export_dir = out_dir / "model" if self.keep_exports else root / "_export"
        rank = trainer.global_rank
        t0 = time.time()
        if trainer.is_global_zero:
            log.info("skill evaluation %s: exporting the weights and generating (%s)", tag,
                     ", ".join(f"{b.name}: {len(b.problems) * b.k} samples" for b in self.loaded))
        pl_module.export_hf(str(export_dir), self.export_dtype)  # collective: every rank, never rank 0 alone
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        t_export = time.time() - t0
        engine, engines, leads = self.engine_slot(trainer)
        records, error, interrupted = [], None, False  # a tensor-parallel peer generates nothing itself
        try:
            if leads:
                records = evaluate_model(
                    str(export_dir), str(export_dir), self.loaded, self.backend, self.sampling,
                    enable_thinking=self.prompt["enable_thinking"], rank=engine, world_size=engines,
                    instruction=self.prompt["instruction"] or DEFAULT_INSTRUCTION,
                    in_subprocess=InSubprocess(
                        env=self._child_env(trainer, pl_module), timeout_s=self.timeout_s,
                        should_stop=(lambda: self._stop_requested(trainer)) if interruptible else None),
                    grading=self.grading,
                    tree=self.tree, skill_format=self.skill_format)
        except GenerationInterrupted:
            interrupted = True
        except Exception as e:  # noqa: BLE001 - every rank must learn of it, or the others would hang
            log.error("skill evaluation %s failed on rank %d:\n%s", tag, rank, traceback.format_exc())
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        t_generate = time.time() - t0 - t_export
        # the status first: ``score`` takes part in collectives, so it runs only when every rank has its records
        statuses = self._all_gather(trainer, (rank, error, interrupted))
        failures = [(r, e) for r, e, _ in statuses if e]
        if failures:
            return self._fail(trainer, tag, failures)
        if any(i for *_, i in statuses):
            return self._interrupt(trainer, tag, export_dir, weights)
        if score is not None:
            try:
                score(records)
            except Exception as e:  # noqa: BLE001 - every rank must learn of it (a failure inside a collective
                # leaves the other ranks waiting until the process-group timeout)
                log.error("scoring the samples of evaluation %s failed on rank %d:\n%s", tag, rank,
                          traceback.format_exc())
                error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        gathered = self._all_gather(trainer, (rank, error, records))
        failures = [(r, e) for r, e, _ in gathered if e]
        if failures:
            return self._fail(trainer, tag, failures)

        summaries = compute_summaries(self.loaded, records, device=pl_module.device,
                                      confidence=self.grading.confidence, resamples=self.grading.bootstrap_resamples)
        report, status = None, None
        if trainer.is_global_zero:
            try:
                all_records = [rec for _, _, recs in gathered for rec in recs]
                for b in self.loaded:  # the synced totals must equal the gathered samples
                    got = sum(1 for r in all_records if r["benchmark"] == b.name)
                    if summaries[b.name]["samples"] != got or got != len(b.problems) * b.k:
                        raise RuntimeError(f"{b.name}: {summaries[b.name]['samples']} synced samples, {got} gathered, "
                                           f"{len(b.problems) * b.k} expected")
                timings = {"export_s": round(t_export, 1), "generate_and_grade_s": round(t_generate, 1)}
                report = write(EvaluationRun(tag, all_records, summaries, timings, t0, out_dir, weights["epoch"],
                                             weights["training"]))
            except Exception as e:  # noqa: BLE001 - reported to every rank below
                log.error("writing the evaluation report %s failed:\n%s", tag, traceback.format_exc())
                status = f"report: {type(e).__name__}: {e}"
        statuses = self._all_gather(trainer, status)
        if trainer.is_global_zero and not self.keep_exports:
            shutil.rmtree(export_dir, ignore_errors=True)
        trainer.strategy.barrier("skill_eval_done")
        bad = [s for s in statuses if s]
        if bad:
            return self._fail(trainer, tag, [(0, bad[0])])
        return report

    def _interrupt(self, trainer, tag: str, export_dir: Path, weights: dict) -> None:
        self.mark_pending(trainer, tag, weights)
        if trainer.is_global_zero:
            log.warning("skill evaluation %s interrupted by a stop signal: it is saved as pending and runs first "
                        "when the run resumes", tag)
            if not self.keep_exports:
                shutil.rmtree(export_dir, ignore_errors=True)
        trainer.strategy.barrier("skill_eval_interrupted")
        return None

    def _fail(self, trainer, tag: str, failures: list[tuple[int, str]]) -> None:
        rank, error = failures[0]
        more = f" (and {len(failures) - 1} more ranks)" if len(failures) > 1 else ""
        message = (f"skill evaluation {tag} failed on rank {rank}{more}: {error}; set on_error: skip on "
                   f"{self.owner} to keep training when evaluation fails")
        if self.on_error == "raise":
            trainer.strategy.barrier("skill_eval_failed")
            raise GenerationError(message)
        if trainer.is_global_zero:
            log.warning("%s -- skipped (on_error: skip)", message)
            self.log_metrics(trainer, {"eval/failed": 1.0})
        trainer.strategy.barrier("skill_eval_skipped")
        return None


class SkillEvalCallback(L.Callback, RunDataCallback, EpochEndEvaluation):
    """Evaluate the model being trained on benchmarks, per set and per skill, with vLLM on the training machines.

    Per evaluation (tag ``baseline`` before training, ``epoch=<k>`` after epoch k):

    - the current weights are exported with ``pl_module.export_hf`` (a collective on every rank) to
      ``<dirpath>/_export`` (removed afterwards unless ``keep_exports``); cached allocator memory is freed;
    - every rank runs its own engine on its disjoint share of the (set, problem, sample) requests in a spawned child
      process (``generate_in_subprocess``) whose environment has no RANK/WORLD_SIZE/MASTER_*/LOCAL_RANK and
      either ``CUDA_VISIBLE_DEVICES`` = the rank's GPU or, on CPU, ``VLLM_CPU_OMP_THREADS_BIND`` = the rank's own
      slice of this machine's cores; all of the engine's memory is returned when the child exits. With
      ``backend.tensor_parallel_size = tp > 1``, each group of ``tp`` consecutive ranks of one node shares one
      engine: the group's first rank starts it over the group's GPUs (or one core slice per tensor-parallel
      worker) and generates the group's share, the others wait;
    - records are gathered (``all_gather_object``) and metrics are synced (torchmetrics, summed over ranks);
      rank 0 writes ``<dirpath>/<tag>/report.json`` (every sample, extracted answer, verdict, and the metrics),
      ``summary.png`` and ``skills_<set>.png`` (with the change since ``baseline`` and the skills the run's
      ``selection_manifest.json`` emphasised), and logs ``eval/<set>/acc``, ``eval/<set>/skill/<topic>/<leaf>``,
      ... to the Lightning loggers at the current global step;
    - every rank leaves together (a final all-gather of the status, then a barrier).

    With a teacher beside the student (``model.distillation.teacher``) and ``heldout`` among the sets, every epoch
    (evaluated or not) also scores the held-out slice's teacher traces with both models: per leaf skill, the mean
    per-token KL(teacher || student) (``held_out_divergence``), written beside the held-out accuracy (report.json's
    skill rows ``kl``, its ``divergence``, ``report.md``, the right-hand panel of ``skills_heldout.png``) and logged as
    ``eval/heldout/kl`` and ``eval/heldout/skill_kl/<topic>/<leaf>``. In on-policy runs (``OnPolicyModule``) every
    evaluation also scores the student's own held-out samples: each rank, on the samples it generated and before they
    are gathered, the per-token KL(student || teacher) of each sample (``score_held_out_samples``, sharded models
    included); the report holds it per skill as ``sample_divergence`` / the rows' ``sample_kl``, logged as
    ``eval/heldout/sample_kl`` and ``eval/heldout/skill_sample_kl/<topic>/<leaf>``.

    A stop signal (``PreemptionCallback``) that arrives during an epoch's evaluation, other than the last epoch's,
    kills the engines: the epoch-end checkpoint records the evaluation as pending, the run stops there, and the
    resumed run evaluates those same weights first. The baseline and the last epoch's evaluation run to the end.
    A run killed outright during an epoch's evaluation (kill -9, the OOM killer) resumes from the checkpoint
    ``ResumableCheckpoint`` takes before it with the evaluation marked pending (``mark_pending_at_epoch_end``): the
    resumed run evaluates those weights first (same tag and report), then trains the next epoch; resumed at the last
    epoch's end, where Lightning skips the whole training loop, it evaluates in ``on_fit_end``.

    Ranks wait for each other inside collectives while the slowest rank generates, so the process-group timeout
    must exceed ``timeout_s``: set it on the strategy, e.g. ``trainer.strategy.init_args.timeout: "3:00:00"``
    (DDPStrategy / ModelParallelStrategy). With more than one rank a shorter timeout is a ConfigError at setup.
    On GPUs the engine shares the device with the training state: set ``backend.gpu_memory_utilization`` to the
    share the engine may take (e.g. 0.3), not vLLM's default.

    Args:
        benchmarks: evaluation sets: registered names (see ``skill_distill.eval_sets``), specs, and ``heldout``
            = the run's held-out slice (``data.val_corpus`` with ``data.attribution`` and ``data.tree``).
        every_n_epochs: evaluate after every N-th epoch (0: only after the last); the last epoch always.
        baseline: also evaluate once before training (skipped when resuming past step 0).
        backend: generation backend (``model`` is set to the export); ``tensor_parallel_size`` ranks (of one node,
            dividing its device count) share one engine.
        sampling: temperature, top-p, max new tokens, base seed (paper: 0.6, 1.0, 16384).
        tree: skill tree for the sets' skills (default: ``data.tree``).
        data_root: folder that relative benchmark paths are also looked up under (registered sets read their
            pinned files, ``asset:bench/<name>``, and ignore it).
        enable_thinking: chat-template thinking mode (default: ``data.enable_thinking``).
        instruction: the user-turn instruction (default: ``data.instruction``, i.e. the training prompt).
        export_dtype: dtype of the exported weights (bfloat16 halves the export; None keeps the training dtype).
        keep_exports: keep each evaluated export as ``<dirpath>/<tag>/model``.
        dirpath: where evaluations go, inside the run directory when relative (default ``eval``, i.e.
            ``<default_root_dir>/eval``).
        on_error: an evaluation failure (engine crash, timeout) on any rank either stops training (raise) or is
            logged and skipped (skip); every rank takes the same decision.
        timeout_s: time limit of one rank's generation.
        grading: how answers are graded and intervals computed (``GradingConfig``, as the evaluate and profile stages
            take it): ``workers`` grading processes per rank (default here 0: grade in the training process),
            ``timeout_s`` per-answer limit of the equivalence check, ``confidence`` interval level,
            ``bootstrap_resamples``.
        emphasis_ratio: a skill counts as emphasised by the selection when its share of the selected examples is at
            least this many times its pool share.
    """

    def __init__(
        self,
        benchmarks: list[str | BenchmarkSpec] | None = None,
        every_n_epochs: int = 1,
        baseline: bool = False,
        backend: BackendConfig = VLLMConfig(),
        sampling: SamplingConfig = SamplingConfig(temperature=0.6, top_p=1.0, max_new_tokens=16384),
        tree: str | None = None,
        data_root: str | None = None,
        enable_thinking: bool | None = None,
        instruction: str | None = None,
        export_dtype: str | None = "bfloat16",
        keep_exports: bool = False,
        dirpath: str | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        timeout_s: float = 3 * 3600,
        grading: GradingConfig = GradingConfig(workers=0),
        emphasis_ratio: float = 1.2,
    ):
        if every_n_epochs < 0:
            raise ConfigError(f"SkillEvalCallback.every_n_epochs must be >= 0, got {every_n_epochs}")
        self.evaluation = InTrainingEvaluation(
            "SkillEvalCallback", backend, sampling, export_dtype, keep_exports, dirpath, on_error, timeout_s, grading)
        self.benchmarks = list(benchmarks) if benchmarks is not None else [HELDOUT, *PAPER_SUITE]
        self.every_n_epochs = every_n_epochs
        self.baseline = baseline
        self.tree, self.data_root = tree, data_root
        self.enable_thinking, self.instruction = enable_thinking, instruction
        self.emphasis_ratio = emphasis_ratio
        self.last_report: dict | None = None
        self.reports: dict[str, str] = {}
        """tag -> report.json path of every evaluation of this run (rank 0)."""
        self._context: EvalContext | None = None
        self._sample_scoring_s = 0.0
        """How long this rank's scoring of its own held-out samples took (``score_held_out_samples``)."""

    # ---- checkpointed state -----------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:  # several may run
        return self._generate_state_key(dirpath=self.dirpath, benchmarks=repr(self.benchmarks))

    def state_dict(self) -> dict[str, Any]:
        return self.evaluation.state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.evaluation.load_state(state_dict)

    def mark_pending_at_epoch_end(self, trainer) -> bool:
        tag = self._tag_at_epoch_end(trainer)
        if tag is not None:
            self.evaluation.mark_pending(trainer, tag)
        return tag is not None

    def pending_metrics_prefix(self) -> str | None:
        return "eval/" if self.evaluation.pending else None

    # ---- set-up ----------------------------------------------------------------------------------------------
    @property
    def dirpath(self) -> str | None:
        """The ``dirpath`` setting (``reports_dir`` resolves it inside the run directory)."""
        return self.evaluation.dirpath

    def reports_dir(self, trainer) -> Path:
        return self.evaluation.reports_dir(trainer)

    def evaluation_problems(self) -> list[str]:
        """Problem texts of this callback's sets other than the held-out corpus (the datamodule keeps them out of
        a closed-loop profiling slice)."""
        from skill_distill.evaluation import load_benchmarks

        specs = [s for s in resolve_specs(self.benchmarks) if s.name != HELDOUT]  # heldout = data.val_corpus
        return [p.problem for b in load_benchmarks(specs, None, self.data_root) for p in b.problems]

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self.evaluation.check_trainer(trainer)
        context = self._eval_context(trainer)
        specs = [self._resolve_heldout(s, context) if s.name == HELDOUT else s for s in resolve_specs(self.benchmarks)]
        tree_path = self.tree or (context.tree if context else None)
        from skill_distill.evaluation import load_benchmarks
        from skill_distill.skill_tree import SkillTree

        ev = self.evaluation
        if tree_path:
            ev.tree = SkillTree.load(tree_path, context.display_names if context else None)
        ev.loaded = load_benchmarks(specs, ev.tree, self.data_root)  # bad inputs fail before training
        self._context = context
        ev.skill_format = context.skill_format if context else None
        ev.prompt = {
            "enable_thinking": self.enable_thinking if self.enable_thinking is not None
            else (context.enable_thinking if context else True),
            "instruction": self.instruction or (context.instruction if context else None),
        }
        if context and context.skill_format.tree_in_prompt and ev.tree is None:
            raise ConfigError("SkillEvalCallback: data.skill_format.tree_in_prompt shows the tree in the prompt, "
                              "but no tree is set (data.tree or the callback's tree)")

    @staticmethod
    def _eval_context(trainer) -> EvalContext | None:
        dm = getattr(trainer, "datamodule", None)
        return dm.eval_context() if isinstance(dm, SkillDataModule) else None

    def _resolve_heldout(self, spec: BenchmarkSpec, context: EvalContext | None) -> BenchmarkSpec:
        if spec.path or spec.hf_name:
            return spec
        if context is None or not context.val_corpus:
            raise ConfigError("SkillEvalCallback: benchmark 'heldout' is the run's held-out slice but data.val_corpus "
                              "is not set; set it or remove 'heldout' from the callback's benchmarks")
        fields, attribution = context.fields, context.attribution
        skills = spec.skills if spec.skills is not None else (
            SkillSource(attribution=attribution) if attribution else None)
        return replace(spec, path=context.val_corpus, id_field=fields.id, problem_field=fields.problem,
                       answer_field=fields.answer or "answer", skills=skills)

    # ---- hooks ------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._run_pending(trainer, pl_module)
        if not self.baseline or trainer.fast_dev_run:
            return
        if trainer.global_step > 0 or RunLayout.report(self.reports_dir(trainer), "baseline").exists():
            return  # resumed: the baseline was taken by the first attempt
        self.evaluate(trainer, pl_module, "baseline")

    def on_fit_end(self, trainer, pl_module) -> None:
        # resumed from the checkpoint taken before the last epoch's evaluation: Lightning skips the whole training
        # loop (on_train_start included), so the evaluation runs here
        if trainer.interrupted or not self._run_pending(trainer, pl_module):
            return
        from callbacks.hf_export import HFExportCallback

        for cb in trainer.callbacks:  # an export written before this (its on_fit_end ran first) gets this result
            if isinstance(cb, HFExportCallback) and cb.last_export:
                cb.on_fit_end(trainer, pl_module)  # with an export already written, it only rewrites the card

    def _run_pending(self, trainer, pl_module) -> bool:
        """Run the evaluation the resumed checkpoint marks pending (a stop signal or a kill came during it), on
        those weights, under its own tag and with what its report records of them. Returns whether one ran."""
        if not self.evaluation.pending or trainer.fast_dev_run:
            return False
        checkpoint = resumable_checkpoint(trainer)
        if checkpoint is not None:  # what the killed attempt logged of it goes, before it is logged again
            checkpoint.resume_logs(trainer)
        tag, weights = self.evaluation.take_pending()
        log.info("skill evaluation %s did not finish before the run stopped: running it now, on the same weights", tag)
        self.evaluate(trainer, pl_module, tag, weights=weights)
        return True

    def _tag_at_epoch_end(self, trainer) -> str | None:
        """The evaluation this epoch's end runs (the last epoch always, else every ``every_n_epochs``), or None."""
        if trainer.fast_dev_run:
            return None
        epoch = trainer.current_epoch
        due = self.every_n_epochs > 0 and (epoch + 1) % self.every_n_epochs == 0
        return f"epoch={epoch}" if is_final_epoch(trainer) or due else None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.fast_dev_run:
            return
        tag = self._tag_at_epoch_end(trainer)
        if tag is not None:
            checkpoint = resumable_checkpoint(trainer)
            if checkpoint is not None:  # the trained weights first, with this evaluation marked pending
                checkpoint.save_before_evaluations(trainer)
            self.evaluate(trainer, pl_module, tag, interruptible=not is_final_epoch(trainer))
        else:  # the held-out divergence every epoch (it costs one forward of each model over the slice)
            divergence = self.held_out_divergence(trainer, pl_module)
            if divergence is not None and trainer.is_global_zero:
                from skill_distill.evaluation import flat_metrics

                self.evaluation.log_metrics(trainer, flat_metrics({HELDOUT: {"divergence": divergence}}))

    # ---- one evaluation -----------------------------------------------------------------------------------------
    def evaluate(self, trainer, pl_module, tag: str, interruptible: bool = False,
                 weights: dict | None = None) -> dict | None:
        """Run one evaluation on every rank (``InTrainingEvaluation.run``, after the held-out divergence); the report
        on rank 0, else None."""
        divergence = self.held_out_divergence(trainer, pl_module)
        score = None
        if self._scores_own_samples(pl_module):
            def score(records: list[dict]) -> None:
                self.score_held_out_samples(trainer, pl_module, records)
        return self.evaluation.run(trainer, pl_module, tag, lambda run: self._write(trainer, run, divergence),
                                   interruptible, weights, score=score)

    def held_out_divergence(self, trainer, pl_module) -> dict | None:
        """The teacher-student divergence on the held-out slice per skill (``evaluation.summarize_divergence``), or
        None when there is no teacher beside the student (``pl_module.teacher``; stored top-k logprobs cannot give the
        full KL), no held-out slice, or ``heldout`` is not among this callback's sets.

        Only the held-out problems the ``heldout`` set evaluates (its limits applied) are scored: every rank scores its
        share of them (``SkillDataModule.held_out_loader``), per example the mean over its supervised tokens of
        KL(teacher || student) at temperature 1, chunked (``FrozenTeacher.example_divergence``); the per-example sums
        are gathered and aggregated with that set's skill chains. Under FSDP2
        each forward is a collective, so a rank with fewer micro-batches repeats its last one (results dropped) until
        all are done; a rank without any scores a one-token filler (``_filler_batches``)."""
        teacher = getattr(pl_module, "teacher", None)
        dm = getattr(trainer, "datamodule", None)
        if teacher is None or not isinstance(dm, SkillDataModule) or \
                all(b.name != HELDOUT for b in self.evaluation.loaded):
            return None
        from lightning.fabric.utilities.apply_func import move_data_to_device

        from lightning_modules.lm_loss import default_chunk_size
        from skill_distill.evaluation import summarize_divergence

        heldout = next(b for b in self.evaluation.loaded if b.name == HELDOUT)
        evaluated = {p.id for p in heldout.problems}  # the problems beside whose accuracy the divergence is shown
        batches = list(dm.held_out_loader(evaluated))
        counts = InTrainingEvaluation._all_gather(trainer, len(batches))
        if max(counts) == 0:
            return None
        forwards = batches or self._filler_batches(pl_module)  # no example in this rank's share: it still takes part
        config = getattr(pl_module, "distillation", None)
        chunk = (config.chunk_size if config else None) or default_chunk_size(pl_module.model.config.hidden_size)
        t0 = time.time()
        per_example: dict[str, tuple[float, int]] = {}
        training = pl_module.training
        pl_module.eval()
        try:
            for i in range(max(counts)):
                batch = move_data_to_device(forwards[min(i, len(forwards) - 1)], pl_module.device)
                scored = teacher.example_divergence(pl_module.model, batch, "forward_kl", chunk)
                if i < len(batches):
                    per_example.update(scored)
        finally:
            pl_module.train(training)
        merged: dict[str, tuple[float, int]] = {}
        for part in InTrainingEvaluation._all_gather(trainer, per_example):
            merged.update(part)
        grading = self.evaluation.grading
        out = summarize_divergence(merged, heldout.chains, heldout.tree, grading.confidence,
                                   grading.bootstrap_resamples)
        out["seconds"] = round(time.time() - t0, 1)
        return out

    def _filler_batches(self, pl_module) -> list[dict]:
        """One micro-batch of one held-out prompt and a one-token completion: what a rank without held-out examples
        scores (results dropped) so that it takes part in every collective forward of the sharded models."""
        from skill_distill.assets import load_tokenizer

        ev = self.evaluation
        heldout = next(b for b in ev.loaded if b.name == HELDOUT)
        return own_sample_batches(load_tokenizer(pl_module.tokenizer_name), heldout, [FILLER_RECORD],
                                  ev.prompt["instruction"], ev.prompt["enable_thinking"], ev.skill_format, ev.tree, 1)

    def _scores_own_samples(self, pl_module) -> bool:
        """On-policy runs (a module with a rollout engine and a teacher beside the student) with ``heldout`` among
        the sets score the student's own held-out samples (``score_held_out_samples``)."""
        return getattr(pl_module, "teacher", None) is not None and hasattr(pl_module, "rollout") and \
            any(b.name == HELDOUT for b in self.evaluation.loaded)

    def score_held_out_samples(self, trainer, pl_module, records: list[dict]) -> None:
        """Every rank, on its own records before they are gathered (``InTrainingEvaluation.run``'s ``score``): each
        held-out sample of this rank gets ``record[SAMPLE_KL] = [sum over its completion tokens of KL(student ||
        teacher), tokens]`` (``score_own_samples``). A forward of a sharded student or teacher is a collective under
        FSDP2, so every rank runs as many micro-batches as the rank with the most: a rank with fewer repeats its last
        one, a rank with none (fewer held-out samples than ranks, a tensor-parallel peer) scores a one-token filler,
        and those results are dropped."""
        from lightning_modules.lm_loss import default_chunk_size
        from skill_distill.assets import load_tokenizer

        ev = self.evaluation
        heldout = next(b for b in ev.loaded if b.name == HELDOUT)
        own = [r for r in records if r["benchmark"] == HELDOUT]
        dm = getattr(trainer, "datamodule", None)
        t0 = time.time()
        tokenizer = load_tokenizer(pl_module.tokenizer_name)
        batches = own_sample_batches(tokenizer, heldout, own, ev.prompt["instruction"], ev.prompt["enable_thinking"],
                                     ev.skill_format, ev.tree, getattr(dm, "val_micro_batch_size", 4))
        rounds = max(InTrainingEvaluation._all_gather(trainer, len(batches)))
        if rounds and not batches:
            batches, own = self._filler_batches(pl_module), []
        chunk = pl_module.distillation.chunk_size or default_chunk_size(pl_module.model.config.hidden_size)
        training = pl_module.training
        pl_module.eval()
        try:
            score_own_samples(pl_module.model, pl_module.teacher, batches, own, chunk, pl_module.device, rounds)
        finally:
            pl_module.train(training)
        self._sample_scoring_s = time.time() - t0

    def held_out_sample_divergence(self, run: EvaluationRun) -> dict | None:
        """The per-skill mean per-token KL(student || teacher) on the student's own held-out samples, aggregated from
        the per-sample values every rank added before the gather (``score_held_out_samples``) like
        ``held_out_divergence`` (``summarize_divergence``; a problem's value pools the tokens of its samples). None
        when no sample was scored (not an on-policy run, no ``heldout`` set)."""
        from skill_distill.evaluation import summarize_divergence

        ev = self.evaluation
        records = [r for r in run.records if r["benchmark"] == HELDOUT]
        if not any(SAMPLE_KL in r for r in records):
            return None
        heldout = next(b for b in ev.loaded if b.name == HELDOUT)
        out = summarize_divergence(pool_own_samples(heldout, records), heldout.chains, heldout.tree,
                                   ev.grading.confidence, ev.grading.bootstrap_resamples)
        out.update(direction=SAMPLE_DIVERGENCE_DIRECTION, unit="nats per sampled token, mean over problems",
                   samples=len(records), seconds=round(self._sample_scoring_s, 1))
        return out

    def _write(self, trainer, run: EvaluationRun, divergence: dict | None = None) -> dict:
        from skill_distill import console
        from skill_distill.evaluation import add_divergence, flat_metrics, publish_report
        from skill_distill.skill_charts import emphasised_skills, load_report, write_history

        ev, tag = self.evaluation, run.tag
        root = self.reports_dir(trainer)
        baseline_path = RunLayout.report(root, "baseline")
        baseline = load_report(baseline_path) if tag != "baseline" and baseline_path.exists() else None
        # the selection this epoch trained on: a re-selected epoch's record (closed loop), else the run's manifest
        layout = RunLayout.of(trainer)
        selection = layout.trained_selection(0 if tag == "baseline" else run.epoch)
        emphasised = emphasised_skills(selection, self.emphasis_ratio) if self._context else {}
        meta = {"tag": tag, "epoch": run.epoch if tag != "baseline" else None,
                "global_step": trainer.global_step, "world_size": trainer.world_size,
                "sampling": asdict(ev.sampling), "enable_thinking": ev.prompt["enable_thinking"],
                "skill_format": asdict(self._context.skill_format) if self._context else None,
                "backend": {"kind": ev.backend.kind, **{k: v for k, v in asdict(ev.backend).items()
                                                        if k in ("dtype", "max_model_len", "tensor_parallel_size")}},
                "tree": None if ev.tree is None else ev.tree.source,
                "baseline": str(baseline_path) if baseline else None, "emphasised_skills": emphasised,
                "timings": run.timings, "training": run.training}
        if divergence is not None:
            add_divergence(run.summaries[HELDOUT], divergence)
        samples_divergence = self.held_out_sample_divergence(run)
        if samples_divergence is not None:
            add_divergence(run.summaries[HELDOUT], samples_divergence, key=SAMPLE_DIVERGENCE, row_key="sample_kl")
        # printed, not logged: training leaves the root logger unconfigured, so INFO records never showed
        lines = [f"{n}: {console.accuracy_text(s['accuracy'])} over {s['problems']} problems"
                 + (f"; {console.weakest_text(s['skills'])}" if s.get("skills") else "")
                 for n, s in run.summaries.items()]
        if divergence is not None and divergence["kl"] is not None:
            lines.append(f"{HELDOUT}: {divergence['direction']} {divergence['kl']:.4f} nats per token over "
                         f"{divergence['examples']} teacher traces")
        if samples_divergence is not None and samples_divergence["kl"] is not None:
            lines.append(f"{HELDOUT}: {samples_divergence['direction']} {samples_divergence['kl']:.4f} nats per token "
                         f"over the student's samples of {samples_divergence['examples']} problems")
        report = publish_report(run.out_dir, ev.loaded, run.records, run.summaries, meta, baseline=baseline,
                                emphasised=emphasised, title=f"skill evaluation {tag}", lines=lines, t0=run.t0)
        write_history(root)  # every evaluation so far, one chart per set
        metrics = flat_metrics(run.summaries)
        # the whole evaluation: export, generation, grading, report and charts
        metrics["eval/time_s"] = round(time.time() - run.t0, 1)
        ev.log_metrics(trainer, metrics)
        self.last_report = report
        self.reports[tag] = str(RunLayout.report(root, tag))
        return report


SAMPLE_DIVERGENCE = "sample_divergence"
"""The key of a set summary's KL on the student's own samples (on-policy runs), beside ``divergence``."""
SAMPLE_DIVERGENCE_DIRECTION = "KL(student || teacher)"


SAMPLE_KL = "sample_kl"
"""A held-out evaluation record's ``[sum over its completion tokens of KL(student || teacher), tokens]``, added by
the rank that generated it (on-policy runs)."""
FILLER_RECORD = {"benchmark": HELDOUT, "index": 0, "sample": -1, "text": "0"}
"""What a rank without held-out samples scores so that it takes part in every collective forward (dropped)."""


def own_sample_key(record: dict) -> str:
    return f"{record['index']}/{record['sample']}"


def own_sample_batches(tokenizer, heldout, records: list[dict], instruction: str | None, enable_thinking: bool,
                       skill_format, tree, examples_per_batch: int) -> list[dict]:
    """Packed micro-batches (``SFTCollator``) of ``examples_per_batch`` evaluation records each, example id
    ``own_sample_key``: a record's completion text, tokenised after the prompt the evaluation rendered for it
    (``user_turn`` and ``render_prompt``, as ``evaluation.evaluate_model``), every completion token supervised.
    Empty completions are left out."""
    from datamodules.batching import SFTCollator
    from skill_distill.batch_contract import build_example
    from skill_distill.formatting import DEFAULT_INSTRUCTION, render_prompt, user_turn

    prompts: dict[int, list[int]] = {}
    examples = []
    for r in records:
        completion = tokenizer(r["text"] or "", add_special_tokens=False)["input_ids"]
        if not completion:
            continue
        index = r["index"]
        if index not in prompts:
            user = user_turn(heldout.problems[index].problem, instruction or DEFAULT_INSTRUCTION, skill_format, tree)
            prompts[index] = tokenizer(render_prompt(tokenizer, user, enable_thinking),
                                       add_special_tokens=False)["input_ids"]
        examples.append(build_example(own_sample_key(r), prompts[index], completion, 1 << 62))  # every token scored
    return [SFTCollator(0, packing=True).collate(examples[start:start + examples_per_batch])
            for start in range(0, len(examples), examples_per_batch)]


def score_own_samples(student, teacher, batches: list[dict], records: list[dict], chunk_size: int, device,
                      rounds: int | None = None) -> None:
    """Add ``SAMPLE_KL`` to each of ``records`` scored in ``batches`` (``own_sample_batches``), chunk by chunk
    (``FrozenTeacher.example_divergence``). ``rounds``: run that many forwards, repeating the last batch (results
    dropped), so that every rank of a sharded model takes part in the same number of collectives."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    by_key = {own_sample_key(r): r for r in records}
    for i in range(max(rounds or 0, len(batches))):
        batch = move_data_to_device(batches[min(i, len(batches) - 1)], device)
        scored = teacher.example_divergence(student, batch, "reverse_kl", chunk_size)
        if i < len(batches):
            for key, (total, tokens) in scored.items():
                if key in by_key:
                    by_key[key][SAMPLE_KL] = [total, tokens]


def pool_own_samples(heldout, records: list[dict]) -> dict[str, tuple[float, int]]:
    """``problem id -> (sum over its scored samples' tokens of KL(student || teacher), tokens)``."""
    per_problem: dict[str, tuple[float, int]] = {}
    for r in records:
        if SAMPLE_KL in r:
            total, tokens = r[SAMPLE_KL]
            problem = heldout.problems[r["index"]].id
            was = per_problem.get(problem, (0.0, 0))
            per_problem[problem] = (was[0] + total, was[1] + tokens)
    return per_problem


def last_step_metrics(trainer) -> dict[str, float]:
    """The last logged value of every per-step training metric (``train/...``: loss, learning rate; with
    distillation the divergence; on-policy the reverse KL, rollout length, truncated share, rollouts/s and teacher
    tokens/s), for the evaluation report."""
    return {k: float(v) for k, v in sorted(trainer.logged_metrics.items())
            if k.startswith("train/") and getattr(v, "numel", lambda: 1)() == 1}


def rank_cores(local_rank: int, local_world_size: int, cores: list[int] | None = None) -> list[int]:
    """This rank's slice of the machine's cores (contiguous, as even as possible), so engines of different ranks
    never share a core; with fewer cores than ranks, one core (shared) per rank."""
    if cores is None:
        try:
            cores = sorted(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = list(range(os.cpu_count() or 1))
    if len(cores) < local_world_size:
        return [cores[local_rank % len(cores)]]
    per, extra = divmod(len(cores), local_world_size)
    start = local_rank * per + min(local_rank, extra)
    return cores[start: start + per + (1 if local_rank < extra else 0)]


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"

