"""Closed-loop skill selection inside training (docs/METHOD.md §3-4): after every N-th epoch the student is
re-profiled on the profiling slice and the next epoch's examples are re-selected from the updated profile.

The re-profile is an evaluation of ``SkillEvalCallback`` (this class extends it): the weights are exported with a
collective, every rank generates its share of the slice in its own vLLM child engine at the profile stage's
sampling, the verdicts are gathered, and a stop signal during it leaves it pending (stop at the epoch-end
checkpoint; the resumed run redoes it on the same weights before training). The update rule and the draw are
``skill_distill.reselection``; the datamodule (``SkillDataModule.reselect_epoch`` / ``install``) swaps the coming
epoch's examples in place, with as many examples as epoch 0, so the step plan and the LR schedule do not move.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

from callbacks.preemption import is_final_epoch
from callbacks.skill_eval import SkillEvalCallback
from skill_distill.generation.base import SamplingConfig
from skill_distill.generation.factory import BackendConfig, VLLMConfig
from skill_distill.io import ConfigError, write_json
from skill_distill.skill_tree import format_chain, parse_chain

log = logging.getLogger(__name__)

SLICE_NAME = "profiling_slice"


def epoch_record_path(root: str | Path, epoch: int) -> Path:
    """``selection/epoch=<k>.json`` of a run directory (epoch 0 is ``selection_manifest.json``)."""
    return Path(root) / "selection" / f"epoch={epoch}.json"


class ReselectionCallback(SkillEvalCallback):
    """Re-profile the student and re-select the coming epoch's data (needs ``data.reselection.every_n_epochs``).

    Per re-profile after epoch ``k``: ``<dirpath>/reprofile/epoch=<k>/report.json`` (+ charts) with every
    sample, ``reprofile/...`` metrics (accuracy per skill, ``reprofile/time_s``: export + generation + grading)
    logged at the current step, and ``<run>/selection/epoch=<k+1>.json`` (the updated profile, the weights, the
    target and the ids). The checkpointed state holds the profile counts and every epoch's ids, so a resumed run
    trains on the same selection and never re-profiles weights it already profiled.

    Args:
        backend: generation backend of the re-profile (``model`` is set to the export).
        sampling: the profile stage's sampling (docs/METHOD.md §3: temperature 0.6, top-p 1.0, 8,192 new tokens).
        verdicts_dir: instead of generating, read ``<verdicts_dir>/epoch=<k>.jsonl`` (verdict rows ``{"id",
            "correct"}`` of the slice, as the profile stage writes them) for the re-profile after epoch ``k``:
            profiles measured elsewhere, or a test without an engine.
        Other arguments as in ``SkillEvalCallback``.
    """

    reprofiles_student = True
    """How ``SkillDataModule`` recognises this callback (it cannot import the callbacks package, which imports it)."""

    def evaluation_problems(self) -> list[str]:
        return []  # the profiling slice is training data of the closed loop, not a test set

    def __init__(
        self,
        backend: BackendConfig = VLLMConfig(),
        sampling: SamplingConfig = SamplingConfig(temperature=0.6, top_p=1.0, max_new_tokens=8192, seed=42),
        verdicts_dir: str | None = None,
        export_dtype: str | None = "bfloat16",
        dirpath: str | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        timeout_s: float = 3 * 3600,
        grader_workers: int = 0,
        grade_timeout_s: float = 5.0,
    ):
        super().__init__(benchmarks=[], every_n_epochs=0, baseline=False, backend=backend, sampling=sampling,
                         export_dtype=export_dtype, dirpath=dirpath, on_error=on_error, timeout_s=timeout_s,
                         grader_workers=grader_workers, grade_timeout_s=grade_timeout_s)
        self.verdicts_dir = verdicts_dir
        self.counts: dict[str, list[float]] = {}
        """Profile counts ``{chain: [correct, judged]}`` after the last re-profile (the next update's prior)."""
        self.selections: dict[int, list[str]] = {}
        """Epoch -> the ids it trains on (re-selected epochs only)."""
        self._records: list[dict] = []
        self._timings: dict = {}

    # ---- checkpointed state -----------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(dirpath=self.dirpath, kind="reselection")

    def state_dict(self) -> dict[str, Any]:
        return {"pending": self._pending, "counts": self.counts,
                "selections": {str(k): v for k, v in self.selections.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("pending")
        self.counts = dict(state_dict.get("counts") or {})
        self.selections = {int(k): list(v) for k, v in (state_dict.get("selections") or {}).items()}

    # ---- set-up ----------------------------------------------------------------------------------------------
    def _root(self, trainer) -> Path:
        return Path(self.dirpath or Path(trainer.default_root_dir) / "eval") / "reprofile"

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        from skill_distill.eval_sets import BenchmarkSpec, LoadedBenchmark, Problem
        from skill_distill.profile import reference_answers
        from skill_distill.reselection import counts_from_profile
        from skill_distill.selection import read_profile_nodes

        dm = getattr(trainer, "datamodule", None)
        if dm is None or not getattr(getattr(dm, "reselection", None), "enabled", False):
            raise ConfigError("ReselectionCallback re-selects the data of a SkillDataModule with "
                              "data.reselection.every_n_epochs > 0; set it, or remove the callback")
        self._check_timeout(trainer)
        problems = []
        for k, e in enumerate(dm.profiling_slice):
            answers = reference_answers(e.answer)
            problems.append(Problem(e.id, e.problem, answers if isinstance(answers, list) else [answers], k))
        spec = BenchmarkSpec(SLICE_NAME, k=max(1, self.sampling.n))
        self.loaded = [LoadedBenchmark(spec, "data.reselection profiling slice", problems,
                                       {e.id: list(dm._chains.get(e.id, [])) for e in dm.profiling_slice},
                                       dm._tree, "leaf")]
        self._tree_obj = dm._tree
        self._prompt_settings = {"enable_thinking": dm.enable_thinking, "instruction": dm.instruction}
        if not self.counts and dm.profile_path:
            accuracy, judged = read_profile_nodes(dm.profile_path, dm._tree)
            self.counts = {format_chain(c): [cj[0], cj[1]] for c, cj in counts_from_profile(accuracy, judged).items()}

    # ---- hooks ------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        if self._pending is not None and not trainer.fast_dev_run:  # a stop signal came during it: same weights
            epoch, self._pending = int(self._pending), None
            log.info("re-profile after epoch %d was interrupted by a stop signal: running it now", epoch)
            self._reprofile(trainer, pl_module, epoch)
        self.install(trainer, trainer.current_epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        n = trainer.datamodule.reselection.every_n_epochs
        if trainer.fast_dev_run or (epoch + 1) % n or (epoch + 1) in self.selections:
            return
        if is_final_epoch(trainer):
            if trainer.max_epochs is None or epoch + 1 < trainer.max_epochs:  # stopping to resume: redo it then
                self._pending = str(epoch)
            return
        self._reprofile(trainer, pl_module, epoch)
        if self._pending is None:
            self.install(trainer, epoch + 1)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.install(trainer, trainer.current_epoch)

    # ---- one re-profile ----------------------------------------------------------------------------------------
    def _reprofile(self, trainer, pl_module, epoch: int) -> None:
        """Profile the weights at the end of ``epoch`` on the slice, update the profile, select epoch + 1."""
        from skill_distill import reselection as rs

        dm = trainer.datamodule
        t0 = time.time()
        self._records = []
        if self.verdicts_dir:
            from skill_distill.selection import read_mean_correctness

            verdicts_file = Path(self.verdicts_dir) / f"epoch={epoch}.jsonl"
            verdicts = {i: [v] for i, v in read_mean_correctness(verdicts_file).items()}
            timings = {"read_s": round(time.time() - t0, 1)}
        else:
            self.evaluate(trainer, pl_module, f"epoch={epoch}", interruptible=True)
            if self._pending is not None:  # interrupted: SkillEvalCallback recorded the tag; keep the epoch
                self._pending = str(epoch)
                return
            verdicts: dict[str, list[bool]] = {}
            for r in self._records:  # rank 0 holds the gathered records; the others get the verdicts only
                verdicts.setdefault(str(r["id"]), []).append(bool(r["correct"]))
            verdicts, timings = trainer.strategy.broadcast((verdicts, self._timings), src=0)
            if not verdicts:  # failed with on_error: skip -- the coming epoch keeps the current selection
                return
        cfg = dm.reselection
        prior = {parse_chain(k): (float(v[0]), float(v[1])) for k, v in self.counts.items()}
        new = rs.slice_counts(verdicts, {e.id: dm._chains.get(e.id, []) for e in dm.profiling_slice})
        counts, accuracy = rs.update_profile(prior, new, cfg.update, cfg.discount, cfg.shrinkage)
        judged = {c: math.ceil(j) for c, (_, j) in counts.items()}
        previous = self.selections.get(epoch) or [e.example_id for e in dm.train_examples]
        result, ids, _ = dm.reselect_epoch(epoch + 1, accuracy, judged, previous)
        self.counts = {format_chain(c): [cj[0], cj[1]] for c, cj in counts.items()}
        self.selections[epoch + 1] = ids
        if trainer.is_global_zero:
            record = rs.epoch_record(epoch + 1, result, ids, accuracy, counts, dm.selection, cfg, timings)
            root = trainer.default_root_dir  # the run directory
            write_json(epoch_record_path(root, epoch + 1), record)
            self._plot(root, dm)
        if trainer.is_global_zero and self.verdicts_dir:
            for logger in trainer.loggers:
                logger.log_metrics({"reprofile/time_s": time.time() - t0}, step=trainer.global_step)
        log.info("re-selected epoch %d from the profile after epoch %d (%.0f s)", epoch + 1, epoch, time.time() - t0)

    def _plot(self, root, dm) -> None:
        """``selection/epochs.png``: target shares and profile accuracies of epoch 0 (the manifest) and every
        re-selected epoch so far."""
        from skill_distill.io import read_json
        from skill_distill.reselection import plot_epochs
        from skill_distill.selection import read_profile_nodes

        manifest = read_json(Path(root) / "selection_manifest.json", "selection manifest")
        accuracy, _ = read_profile_nodes(dm.profile_path, dm._tree, dm.selection.profile_value)
        first = {"epoch": 0, "target": manifest.get("target") or {},
                 "profile": {format_chain(c): {"accuracy": a} for c, a in accuracy.items()}}
        records = [first] + [read_json(epoch_record_path(root, k), "epoch selection") for k in sorted(self.selections)
                             if epoch_record_path(root, k).is_file()]
        plot_epochs(records, Path(root) / "selection" / "epochs.png")

    def install(self, trainer, epoch: int) -> None:
        """Make ``epoch`` train on its re-selected ids (nothing for an epoch that keeps the previous data)."""
        dm = trainer.datamodule
        chosen = max((k for k in self.selections if k <= epoch), default=None)
        if chosen is None:
            return
        ids = self.selections[chosen]
        if [e.example_id for e in dm.train_examples] == ids:
            return
        by_id = {e.id: e for e in dm.eligible_pool}
        tokenised, _ = dm.format_and_tokenize([by_id[i] for i in ids])
        dm.install(tokenised)

    def _write(self, trainer, tag: str, records: list[dict], summaries: dict, timings: dict, t0: float,
               out_dir: Path) -> dict:
        """Rank 0: keep the records for the update, write the report and log ``reprofile/...`` metrics (not
        ``eval/...``, which belong to the run's evaluation)."""
        from skill_distill.evaluation import build_report, flat_metrics, write_report

        meta = {"tag": tag, "epoch": trainer.current_epoch, "global_step": trainer.global_step,
                "world_size": trainer.world_size, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "sampling": {k: getattr(self.sampling, k) for k in ("temperature", "top_p", "max_new_tokens", "seed")},
                "timings": timings}
        report = build_report(self.loaded, records, summaries, meta)
        write_report(out_dir, report)
        metrics = flat_metrics(summaries, prefix="reprofile")
        metrics["reprofile/time_s"] = round(time.time() - t0, 1)
        metrics["reprofile/generate_and_grade_s"] = timings.get("generate_and_grade_s", 0.0)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        self._records = list(records)
        self._timings = {**timings, "total_s": metrics["reprofile/time_s"]}
        return report
