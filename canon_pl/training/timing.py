"""Where a fit's wall time goes: data (the LM capture or the shard reads behind each batch), SAE steps, validation,
checkpoint writes and the rest (set-up, the first batch, the export), written to ``<run>/fit_time.json``.

The parts are read from the loop's own events on rank 0: a step is ``on_train_batch_start`` to
``on_train_batch_end``; the gap before the next step start is validation when a validation ran in it, else data;
checkpoint writes are timed by :class:`canon_pl.training.checkpoint_io.AtomicCheckpointIO` and taken out of the
gap they fell in. ``canon-pl pipeline`` prints the parts as rows of its stage table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from canon_pl.io.atomic import atomic_write_json
from canon_pl.io.layout import RunLayout

FIT_TIME_FILE = RunLayout.FIT_TIME
PARTS = ("data", "sae_steps", "validation", "checkpointing", "other")
"""The parts of a fit's wall time, in the order they are shown."""
PART_NAMES = {"data": "data (LM capture or shard reads)", "sae_steps": "SAE steps (forward, backward, optimizer)",
              "validation": "validation (incl. spliced CE and the StitchingCallback)",
              "checkpointing": "checkpoint writes", "other": "other (set-up, first batch, export)"}


def checkpoint_seconds(trainer: L.Trainer) -> float:
    """Seconds the trainer's checkpoint IO has spent writing (0 for an IO that does not count them)."""
    return float(getattr(trainer.strategy.checkpoint_io, "seconds_writing", 0.0))


class FitTimeBreakdown(L.Callback):
    """Split the fit's wall time into :data:`PARTS` and write them to ``<default_root_dir>/fit_time.json``."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.steps = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self.steps = 0
        self._fit_start = time.perf_counter()
        self._step_start: float | None = None
        self._gap_start: float | None = None  # the end of the last step
        self._gap_checkpoints = checkpoint_seconds(trainer)
        self._gap_had_validation = False

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        if self._gap_start is not None:
            written = checkpoint_seconds(trainer) - self._gap_checkpoints
            self.seconds["checkpointing"] += written
            part = "validation" if self._gap_had_validation else "data"
            self.seconds[part] += max(now - self._gap_start - written, 0.0)
        self._step_start = now

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        now = time.perf_counter()
        if self._step_start is not None:
            self.seconds["sae_steps"] += now - self._step_start
            self.steps += 1
        self._gap_start, self._gap_had_validation = now, False
        self._gap_checkpoints = checkpoint_seconds(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._gap_had_validation = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._gap_start is not None:  # the last gap: the final validation and checkpoint, if any
            written = checkpoint_seconds(trainer) - self._gap_checkpoints
            self.seconds["checkpointing"] += written
            if self._gap_had_validation:
                self.seconds["validation"] += max(time.perf_counter() - self._gap_start - written, 0.0)
        total = time.perf_counter() - self._fit_start
        self.seconds["other"] = max(total - sum(v for k, v in self.seconds.items() if k != "other"), 0.0)
        if not trainer.is_global_zero:
            return
        record = {"total": round(total, 2), "steps": self.steps,
                  "seconds": {part: round(value, 2) for part, value in self.seconds.items()}}
        atomic_write_json(RunLayout(trainer.default_root_dir).fit_time, record)
        rank_zero_info("canon-pl: fit time\n" + fit_time_table(record))


def read_fit_time(run: str | Path) -> dict[str, Any] | None:
    """``<run>/fit_time.json`` as written by :class:`FitTimeBreakdown`, or ``None`` when absent or unreadable."""
    try:
        record = json.loads(RunLayout(run).fit_time.read_text())
    except (OSError, ValueError):
        return None
    seconds = record.get("seconds") if isinstance(record, dict) else None
    if not isinstance(seconds, dict) or not all(isinstance(seconds.get(p), (int, float)) for p in PARTS):
        return None
    return record


def fit_time_table(record: dict[str, Any], indent: str = "") -> str:
    """The parts of ``record`` as aligned rows: name, seconds, share of the fit."""
    total = max(float(record["total"]), 1e-9)
    return "\n".join(f"{indent}{PART_NAMES[p]:<58} {record['seconds'][p]:>8.1f} s {record['seconds'][p] / total:>6.1%}"
                     for p in PARTS)


__all__ = ["FIT_TIME_FILE", "PARTS", "FitTimeBreakdown", "checkpoint_seconds", "fit_time_table", "read_fit_time"]
