"""How every canon-pl training run writes and reads its Lightning ``.ckpt`` files.

Lightning's own writer stages a checkpoint in the system's temporary folder and copies it across filesystems, so a
full disk leaves a truncated file under a checkpoint's name; its reader, given a checkpoint that carries pickled
code, answers with torch's advice to load it unrestricted. :class:`AtomicCheckpointIO` writes each checkpoint to a
temporary file in the checkpoint's own folder, fsyncs it and renames it into place (canon_pl/io/atomic.py), and reads
through :func:`canon_pl.io.checkpoint.safe_torch_load`. The SAE modules install it at fit start
(:func:`use_atomic_checkpoint_io`), so every config gets it without naming it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from canon_pl.io.atomic import atomic_paths
from canon_pl.io.checkpoint import safe_torch_load


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO for local folders, with atomic writes and restricted (``weights_only``) reads.
    ``seconds_writing`` counts the time spent in writes (read by :class:`canon_pl.training.timing.FitTimeBreakdown`)."""

    seconds_writing: float = 0.0

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        started = time.perf_counter()
        try:
            with atomic_paths(path) as (temporary,), open(temporary, "wb") as stream:
                # through a Python file, so a full disk raises its own OSError (torch's own writer reports an
                # iostream error with no errno)
                torch.save(checkpoint, stream)
        finally:
            self.seconds_writing += time.perf_counter() - started

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return safe_torch_load(Path(path))  # tensors on the CPU; Lightning moves them where they belong


def use_atomic_checkpoint_io(trainer: L.Trainer) -> None:
    """Give ``trainer``'s strategy an :class:`AtomicCheckpointIO` when it has Lightning's default local one (a
    checkpoint IO the config chose itself, e.g. for object storage, is kept)."""
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
