"""Export the trained weights as an HF directory when training ends (and optionally every N epochs)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from skill_distill.run_layout import RunLayout


class HFExportCallback(L.Callback):
    """Args:
        dirpath: where exports go, inside the run directory when relative (default: ``hf_export``, i.e.
            ``<default_root_dir>/hf_export``); the final one is ``final/``.
        every_n_epochs: also export ``epoch=<k>/`` every N epochs (0: only at the end).
        dtype: cast floating weights on export (e.g. bfloat16 halves the size); None keeps the training dtype.
    """

    def __init__(self, dirpath: str | None = None, every_n_epochs: int = 0, dtype: str | None = None):
        self.dirpath = dirpath
        self.every_n_epochs = every_n_epochs
        self.dtype = dtype
        self.last_export: str | None = None

    def _root(self, trainer) -> Path:
        return RunLayout.of(trainer).inside(self.dirpath, RunLayout.of(trainer).hf_export)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.last_export = pl_module.export_hf(str(self._root(trainer) / f"epoch={trainer.current_epoch}"),
                                                   self.dtype)
            self._write_card(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.last_export = pl_module.export_hf(str(self._root(trainer) / "final"), self.dtype)
        self._write_card(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.last_export is None and not trainer.interrupted and trainer.fit_loop.done:
            # resumed from a checkpoint of the last step: Lightning skips the whole fit loop then, on_train_end
            # included, so the export is written here (a kill after that checkpoint, before the export) ...
            final = self._root(trainer) / "final"
            if not final.exists():
                self.on_train_end(trainer, pl_module)
                return
            # ... or was written by an attempt killed after it, during the last evaluation: the same weights, whose
            # card gets that evaluation once it is redone (the evaluation callback calls this again then)
            self.last_export = str(final)
        if self.last_export:  # again, with the evaluations that ran after the export (final-weights benchmarks)
            self._write_card(trainer, pl_module)

    def _write_card(self, trainer, pl_module) -> None:
        """README.md model card in the export (skill_distill.model_card), from the run's hyperparameters, manifest,
        pool decontamination counts and latest evaluation."""
        if not trainer.is_global_zero:
            return
        from skill_distill.model_card import card_for_run, write_model_card

        hp = dict(pl_module.hparams)
        training = {**hp, "max_epochs": trainer.max_epochs, "precision": str(trainer.precision),
                    "global_step": trainer.global_step, "world_size": trainer.world_size,
                    "accumulate_grad_batches": trainer.accumulate_grad_batches}
        dm = getattr(trainer, "datamodule", None)
        data = dict(dm.hparams) if dm is not None and hasattr(dm, "hparams") else {}
        reports = [cb.last_report for cb in trainer.callbacks if getattr(cb, "last_report", None)]
        evaluation = max(reports, key=lambda r: len(r.get("summary") or {}), default=None)  # the widest evaluation
        # an evaluation of these weights a resume redoes after the export: the card says so until it is rewritten
        # (found like the reports above: callbacks.skill_eval imports this module)
        pending = next((cb.evaluation.pending for cb in trainer.callbacks if hasattr(cb, "last_report")
                        and getattr(getattr(cb, "evaluation", None), "pending", None)), None)
        card = card_for_run(hp.get("model"), training, data, trainer.default_root_dir, evaluation, pending=pending)
        write_model_card(self.last_export, card)
