"""Closed-loop skill selection inside training (docs/METHOD.md §3-4): after every N-th epoch the student is
re-profiled on the profiling slice and the next epoch's examples are re-selected from the updated profile.

The re-profile is an in-training evaluation (``callbacks.skill_eval.InTrainingEvaluation``, as ``SkillEvalCallback``
uses): the weights are exported with a collective, every rank generates its share of the slice in its own vLLM
child engine at the profile stage's sampling, the verdicts are gathered, and a stop signal during it leaves it
pending (stop at the epoch-end checkpoint; the resumed run redoes it on the same weights before training), and so
does a kill during it (the checkpoint taken before it marks it pending: ``EpochEndEvaluation``). The
update rule is ``skill_distill.reselection``; the data module draws the coming epoch's ids
(``SkillDataModule.reselect_epoch``, as many examples as epoch 0, so the step plan and the LR schedule do not move)
and trains on them once handed over (``SkillDataModule.use_selection``).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L

from callbacks.checkpointing import EpochEndEvaluation, resumable_checkpoint
from callbacks.preemption import is_final_epoch
from callbacks.skill_eval import EvaluationRun, InTrainingEvaluation
from datamodules.skill_datamodule import EvalContext, RunDataCallback, SkillDataModule
from skill_distill.generation.base import SamplingConfig
from skill_distill.generation.factory import BackendConfig, VLLMConfig
from skill_distill.grading import GradingConfig
from skill_distill.io import ConfigError, write_json
from skill_distill.run_layout import RunLayout
from skill_distill.skill_tree import format_chain, parse_chain

log = logging.getLogger(__name__)

SLICE_NAME = "profiling_slice"


class ReselectionCallback(L.Callback, RunDataCallback, EpochEndEvaluation):
    """Re-profile the student and re-select the coming epoch's data (needs ``data.reselection.every_n_epochs``).

    Per re-profile after epoch ``k``: ``<dirpath>/reprofile/epoch=<k>/report.json`` (+ charts) with every
    sample, ``reprofile/...`` metrics (accuracy per skill, ``reprofile/time_s``: export + generation + grading)
    logged at the current step, and ``<run>/selection/epoch=<k+1>.json`` (the updated profile, the weights, the
    target and the ids). The checkpointed state holds the profile counts (and the data module's, every re-selected
    epoch's ids), so a resumed run trains on the same selection and never re-profiles weights it already profiled.

    Args:
        backend: generation backend of the re-profile (``model`` is set to the export).
        sampling: the profile stage's sampling (docs/METHOD.md §3: temperature 0.6, top-p 1.0, 8,192 new tokens).
        verdicts_dir: instead of generating, read ``<verdicts_dir>/epoch=<k>.jsonl`` (verdict rows ``{"id",
            "correct"}`` of the slice, as the profile stage writes them) for the re-profile after epoch ``k``:
            profiles measured elsewhere, or a test without an engine.
        Other arguments as in ``SkillEvalCallback``.
    """

    reselects_epochs = True

    def __init__(
        self,
        backend: BackendConfig = VLLMConfig(),
        sampling: SamplingConfig = SamplingConfig(temperature=0.6, top_p=1.0, max_new_tokens=8192, seed=42),
        verdicts_dir: str | None = None,
        export_dtype: str | None = "bfloat16",
        dirpath: str | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        timeout_s: float = 3 * 3600,
        grading: GradingConfig = GradingConfig(workers=0),
    ):
        self.evaluation = InTrainingEvaluation(
            "ReselectionCallback", backend, sampling, export_dtype, False, dirpath, on_error, timeout_s,
            grading, subdir="reprofile")
        self.verdicts_dir = verdicts_dir
        self.counts: dict[str, list[float]] = {}
        """Profile counts ``{chain: [correct, judged]}`` after the last re-profile (the next update's prior)."""
        self._context: EvalContext | None = None
        self._records: list[dict] = []
        self._timings: dict = {}

    # ---- checkpointed state -----------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(dirpath=self.dirpath, kind="reselection")

    def state_dict(self) -> dict[str, Any]:
        return {**self.evaluation.state(), "counts": self.counts}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.evaluation.load_state(state_dict)
        self.counts = dict(state_dict.get("counts") or {})

    def mark_pending_at_epoch_end(self, trainer) -> bool:
        due = self._reprofiles_now(trainer)
        if due:
            self.evaluation.mark_pending(trainer, f"epoch={trainer.current_epoch}")
        return due

    def pending_metrics_prefix(self) -> str | None:
        return "reprofile/" if self.evaluation.pending else None

    # ---- set-up ----------------------------------------------------------------------------------------------
    @property
    def dirpath(self) -> str | None:
        """The ``dirpath`` setting (``reports_dir`` resolves it inside the run directory)."""
        return self.evaluation.dirpath

    def reports_dir(self, trainer) -> Path:
        return self.evaluation.reports_dir(trainer)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        from skill_distill.eval_sets import BenchmarkSpec, LoadedBenchmark, Problem
        from skill_distill.profile import reference_answers
        from skill_distill.reselection import counts_from_profile
        from skill_distill.selection import read_profile_nodes

        dm = getattr(trainer, "datamodule", None)
        if not isinstance(dm, SkillDataModule) or not dm.reselection.enabled:
            raise ConfigError("ReselectionCallback re-selects the data of a SkillDataModule with "
                              "data.reselection.every_n_epochs > 0; set it, or remove the callback")
        ev = self.evaluation
        ev.check_trainer(trainer)
        self._context = context = dm.eval_context()
        problems = []
        for k, e in enumerate(context.profiling_slice):
            answers = reference_answers(e.answer)
            problems.append(Problem(e.id, e.problem, answers if isinstance(answers, list) else [answers], k))
        spec = BenchmarkSpec(SLICE_NAME, k=max(1, ev.sampling.n))
        ev.loaded = [LoadedBenchmark(spec, "data.reselection profiling slice", problems,
                                     {e.id: list(context.chains.get(e.id, [])) for e in context.profiling_slice},
                                     context.skill_tree, "leaf")]
        ev.tree = context.skill_tree
        # the profile stage's prompt: the training instruction and thinking mode, no skill format
        ev.prompt = {"enable_thinking": context.enable_thinking, "instruction": context.instruction}
        if not self.counts and dm.profile_path:
            accuracy, judged = read_profile_nodes(dm.profile_path, context.skill_tree)
            self.counts = {format_chain(c): [cj[0], cj[1]] for c, cj in counts_from_profile(accuracy, judged).items()}

    # ---- hooks ------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        ev = self.evaluation
        if ev.pending is not None and not trainer.fast_dev_run:  # a stop signal or a kill came during it
            checkpoint = resumable_checkpoint(trainer)
            if checkpoint is not None:  # what the killed attempt logged of it goes, before it is logged again
                checkpoint.resume_logs(trainer)
            _, weights = ev.take_pending()
            log.info("re-profile after epoch %d did not finish before the run stopped: running it now",
                     weights["epoch"])
            self._reprofile(trainer, pl_module, weights["epoch"], weights)

    def _due(self, trainer) -> bool:
        """Whether the end of the current epoch re-selects the next one (now, or after resumption)."""
        epoch = trainer.current_epoch
        dm = trainer.datamodule
        return not (trainer.fast_dev_run or (epoch + 1) % dm.reselection.every_n_epochs
                    or (epoch + 1) in dm.reselected_epochs())

    def _reprofiles_now(self, trainer) -> bool:
        return self._due(trainer) and not is_final_epoch(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._due(trainer):
            return
        epoch = trainer.current_epoch
        if is_final_epoch(trainer):
            if trainer.max_epochs is None or epoch + 1 < trainer.max_epochs:  # stopping to resume: redo it then
                self.evaluation.mark_pending(trainer, f"epoch={epoch}")
            return
        checkpoint = resumable_checkpoint(trainer)
        if checkpoint is not None:  # the trained weights first, with this re-profile marked pending
            checkpoint.save_before_evaluations(trainer)
        self._reprofile(trainer, pl_module, epoch)

    # ---- one re-profile ----------------------------------------------------------------------------------------
    def _reprofile(self, trainer, pl_module, epoch: int, weights: dict | None = None) -> None:
        """Profile the weights at the end of ``epoch`` on the slice, update the profile, and hand the ids drawn
        for epoch + 1 to the data module (``weights``: a pending re-profile's, see ``InTrainingEvaluation.run``)."""
        from skill_distill import reselection as rs

        dm = trainer.datamodule
        context = self._context
        t0 = time.time()
        self._records = []
        self.evaluation.pending = None  # running now (the checkpoint taken before it marks it pending)
        if self.verdicts_dir:
            from skill_distill.selection import read_mean_correctness

            verdicts_file = Path(self.verdicts_dir) / f"epoch={epoch}.jsonl"
            verdicts = {i: [v] for i, v in read_mean_correctness(verdicts_file).items()}
            timings = {"read_s": round(time.time() - t0, 1)}
        else:
            self.evaluation.run(trainer, pl_module, f"epoch={epoch}", lambda run: self._write(trainer, run),
                                interruptible=True, weights=weights)
            if self.evaluation.pending is not None:  # interrupted: redone after resumption
                return
            verdicts: dict[str, list[bool]] = {}
            for r in self._records:  # rank 0 holds the gathered records; the others get the verdicts only
                verdicts.setdefault(str(r["id"]), []).append(bool(r["correct"]))
            verdicts, timings = trainer.strategy.broadcast((verdicts, self._timings), src=0)
            if not verdicts:  # failed with on_error: skip -- the coming epoch keeps the current selection
                return
        cfg = dm.reselection
        prior = {parse_chain(k): (float(v[0]), float(v[1])) for k, v in self.counts.items()}
        new = rs.slice_counts(verdicts, {e.id: context.chains.get(e.id, []) for e in context.profiling_slice})
        counts, accuracy = rs.update_profile(prior, new, cfg.update, cfg.discount, cfg.shrinkage)
        judged = {c: math.ceil(j) for c, (_, j) in counts.items()}
        result, ids = dm.reselect_epoch(epoch + 1, accuracy, judged, dm.epoch_ids(epoch))
        self.counts = {format_chain(c): [cj[0], cj[1]] for c, cj in counts.items()}
        dm.use_selection(epoch + 1, ids)
        if trainer.is_global_zero:
            record = rs.epoch_record(epoch + 1, result, ids, accuracy, counts, dm.selection, cfg, timings)
            layout = RunLayout.of(trainer)
            write_json(layout.selection_for_epoch(epoch + 1), record)
            self._plot(layout, dm)
        if trainer.is_global_zero and self.verdicts_dir:
            self.evaluation.log_metrics(trainer, {"reprofile/time_s": time.time() - t0})
        log.info("re-selected epoch %d from the profile after epoch %d (%.0f s)", epoch + 1, epoch, time.time() - t0)

    def _plot(self, layout: RunLayout, dm: SkillDataModule) -> None:
        """``selection/epochs.png``: target shares and profile accuracies of epoch 0 (the manifest) and every
        re-selected epoch so far."""
        from skill_distill.io import read_json
        from skill_distill.reselection import plot_epochs
        from skill_distill.selection import read_profile_nodes

        manifest = read_json(layout.manifest, "selection manifest")
        accuracy, _ = read_profile_nodes(dm.profile_path, self._context.skill_tree, dm.selection.profile_value)
        first = {"epoch": 0, "target": manifest.get("target") or {},
                 "profile": {format_chain(c): {"accuracy": a} for c, a in accuracy.items()}}
        records = [first] + [read_json(layout.selection_for_epoch(k), "epoch selection")
                             for k in dm.reselected_epochs() if layout.selection_for_epoch(k).is_file()]
        plot_epochs(records, layout.selection_chart)

    def _write(self, trainer, run: EvaluationRun) -> dict:
        """Rank 0: keep the records for the update, write the report and log ``reprofile/...`` metrics (not
        ``eval/...``, which belong to the run's evaluation)."""
        from skill_distill.evaluation import flat_metrics, publish_report

        ev = self.evaluation
        meta = {"tag": run.tag, "epoch": run.epoch, "global_step": trainer.global_step,
                "world_size": trainer.world_size,
                "sampling": {k: getattr(ev.sampling, k) for k in ("temperature", "top_p", "max_new_tokens", "seed")},
                "timings": run.timings}
        report = publish_report(run.out_dir, ev.loaded, run.records, run.summaries, meta)
        metrics = flat_metrics(run.summaries, prefix="reprofile")
        metrics["reprofile/time_s"] = round(time.time() - run.t0, 1)
        metrics["reprofile/generate_and_grade_s"] = run.timings.get("generate_and_grade_s", 0.0)
        ev.log_metrics(trainer, metrics)
        self._records = list(run.records)
        self._timings = {**run.timings, "total_s": metrics["reprofile/time_s"]}
        return report
