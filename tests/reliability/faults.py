"""Real faults for the reliability tests, loadable by `lightning fit` from a config (``tests.reliability.faults``)."""

from __future__ import annotations

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL this process once ``step`` optimizer steps are done: no handler runs, nothing is flushed, as when a
    node dies or the OOM killer strikes."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonAtStep(L.Callback):
    """Put a NaN into the SAE's weights at ``step`` (a diverged update), so the next loss is non-finite."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.global_step == self.step:
            first = next(iter(pl_module.members.values()))
            first.W_enc.data[0, 0] = float("nan")
