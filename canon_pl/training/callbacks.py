"""Callbacks: the portable export at the end of ``fit`` and a step-counting progress bar."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_info

from canon_pl.io.family import MANIFEST_FILE, is_multi_hook_run


class SAEExportCallback(L.Callback):
    """Writes ``sae.safetensors`` + ``cfg.json`` under ``dirpath`` when ``fit`` ends normally.

    A run that stops with an error exports nothing, so an earlier export is never replaced by a broken one.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        """
        Args:
            dirpath: Export folder; ``None`` = the module's ``export_dir`` or else the trainer's ``default_root_dir``.
        """
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "export"):
            return
        target = Path(self.dirpath or getattr(getattr(pl_module, "settings", pl_module.hparams), "export_dir", None) or trainer.default_root_dir)
        target = Path(trainer.strategy.broadcast(str(target)))
        pl_module.export(target)  # every rank: a sharded SAE is gathered first; rank 0 alone writes
        if not trainer.is_global_zero:
            return
        if is_multi_hook_run(target):
            rank_zero_info(f"canon-pl: exported a family per hook point to {target}/<hook point>/ (load one with "
                           f"canon_pl.load_family({str(target)!r} + '/<hook point>'))")
        elif (target / MANIFEST_FILE).is_file():
            rank_zero_info(f"canon-pl: exported the family to {target} (load it with canon_pl.load_family({str(target)!r}))")
        else:
            rank_zero_info(f"canon-pl: exported the SAE to {target} (load it with canon_pl.load_sae({str(target)!r}))")


class StepProgressBar(TQDMProgressBar):
    """A progress bar whose total is ``max_steps`` when the training stream is infinite."""

    @property
    def total_train_batches(self) -> int | float:
        total = super().total_train_batches
        if math.isinf(total) and self.trainer.max_steps and self.trainer.max_steps > 0:
            return self.trainer.max_steps
        return total

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.initial = trainer.global_step
        self.train_progress_bar.n = trainer.global_step
