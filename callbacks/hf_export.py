"""Export the trained weights as an HF directory when training ends (and optionally every N epochs)."""

from __future__ import annotations

from pathlib import Path

import lightning as L


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
        return Path(trainer.default_root_dir) / (self.dirpath or "hf_export")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.last_export = pl_module.export_hf(str(self._root(trainer) / f"epoch={trainer.current_epoch}"), self.dtype)

    def on_train_end(self, trainer, pl_module) -> None:
        self.last_export = pl_module.export_hf(str(self._root(trainer) / "final"), self.dtype)
