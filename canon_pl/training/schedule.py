"""The learning-rate schedule of an SAE run: linear warm-up, constant, then an optional decay over the last steps.

As SAELens states it: the rate rises linearly over ``warmup_steps`` (from ``1 / warmup_steps`` of the base rate at
step 0 to the base rate), stays constant, and over the last ``decay_steps`` of ``max_steps`` falls to
``final_fraction`` of the base rate, linearly or along a half cosine. Pure Python (no Lightning): the modules wrap
:func:`lr_factor` in a ``LambdaLR`` stepped once per optimizer step, whose position Lightning saves in every
checkpoint, so a resumed run continues the schedule where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from canon_pl.checks import check_counts, check_non_negative
from canon_pl.errors import SettingError

DECAYS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class LRSchedule:
    """``warmup_steps`` (0: none), ``decay`` (one of :data:`DECAYS`), ``decay_steps`` (the last steps of the run
    over which it decays) and ``final_fraction`` (the rate at the last step over the base rate)."""

    warmup_steps: int = 0
    decay: str = "constant"
    decay_steps: int = 0
    final_fraction: float = 0.1

    def __post_init__(self) -> None:
        check_counts(0, lr_warmup_steps=self.warmup_steps, lr_decay_steps=self.decay_steps)
        check_non_negative(lr_final_fraction=self.final_fraction)
        if self.final_fraction > 1:
            raise SettingError(f"lr_final_fraction must lie in [0, 1], got {self.final_fraction}")
        if self.decay not in DECAYS:
            raise SettingError(f"lr_decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        if self.decay != "constant" and self.decay_steps == 0:
            raise SettingError(f"lr_decay {self.decay!r} needs lr_decay_steps > 0 (the last steps to decay over)")

    @property
    def is_constant(self) -> bool:
        return self.warmup_steps == 0 and self.decay == "constant"

    def check_fits(self, max_steps: int) -> None:
        """The warm-up and the decay must fit in a run of ``max_steps`` (a run without ``max_steps`` cannot decay)."""
        if self.decay != "constant" and max_steps <= 0:
            raise SettingError(f"lr_decay {self.decay!r} decays over the last steps of the run: set trainer.max_steps")
        if max_steps > 0 and self.warmup_steps + self.decay_steps > max_steps:
            raise SettingError(f"lr_warmup_steps ({self.warmup_steps}) + lr_decay_steps ({self.decay_steps}) exceed "
                               f"trainer.max_steps ({max_steps})")


def lr_factor(schedule: LRSchedule, step: int, max_steps: int) -> float:
    """The multiple of the base learning rate used by optimizer step ``step`` (0-based) of ``max_steps``."""
    factor = 1.0
    if step < schedule.warmup_steps:
        factor = (step + 1) / schedule.warmup_steps
    decay_start = max_steps - schedule.decay_steps
    if schedule.decay != "constant" and step >= decay_start:
        progress = min((step - decay_start + 1) / schedule.decay_steps, 1.0)
        final = schedule.final_fraction
        if schedule.decay == "linear":
            factor = 1.0 - (1.0 - final) * progress
        else:
            factor = final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


__all__ = ["DECAYS", "LRSchedule", "lr_factor"]
