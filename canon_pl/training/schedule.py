"""How an SAE run optimises, stated once (``model.init_args.optimizer`` in YAML): Adam's rate and betas and the
learning-rate schedule: linear warm-up, constant, then an optional decay over the last steps.

As SAELens states it: the rate rises linearly over ``warmup_steps`` (from ``1 / warmup_steps`` of the base rate at
step 0 to the base rate), stays constant, and over the last ``decay_steps`` of ``max_steps`` falls to
``final_fraction`` of the base rate, linearly or along a half cosine. Pure Python (no Lightning): the modules wrap
:func:`lr_factor` in a ``LambdaLR`` stepped once per optimizer step, whose position Lightning saves in every
checkpoint, so a resumed run continues the schedule where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from canon_pl.checks import check_counts, check_non_negative
from canon_pl.errors import SettingError

DECAYS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class OptimizerSettings:
    """Adam and its learning-rate schedule, the same for every width of a run."""

    lr: float | None = None
    """Adam's learning rate; ``None`` = 3e-4 scaled by ``1/sqrt(width / 2^14)`` for each width above 2^14."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam's betas."""
    warmup_steps: int = 0
    """Steps over which the rate rises linearly to ``lr`` (0 = none)."""
    decay: str = "constant"
    """``constant``, ``linear`` or ``cosine``: how the rate falls over the last ``decay_steps`` of
    ``trainer.max_steps``."""
    decay_steps: int = 0
    """The last steps of the run over which the rate decays."""
    final_fraction: float = 0.1
    """The rate at the last step over ``lr`` (``linear`` / ``cosine``)."""

    def __post_init__(self) -> None:
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise SettingError(f"optimizer.lr must be a positive number, got {self.lr} (a negative rate trains by "
                               f"gradient ascent)")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise SettingError(f"optimizer.betas must be two numbers in [0, 1) (Adam's decay rates, e.g. [0.9, 0.99]), "
                               f"got {list(self.betas)}")
        check_counts(0, **{"optimizer.warmup_steps": self.warmup_steps, "optimizer.decay_steps": self.decay_steps})
        check_non_negative(**{"optimizer.final_fraction": self.final_fraction})
        if self.final_fraction > 1:
            raise SettingError(f"optimizer.final_fraction must lie in [0, 1], got {self.final_fraction}")
        if self.decay not in DECAYS:
            raise SettingError(f"optimizer.decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        if self.decay != "constant" and self.decay_steps == 0:
            raise SettingError(f"optimizer.decay {self.decay!r} needs optimizer.decay_steps > 0 (the last steps to "
                               f"decay over)")

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as checkpoints store them (``betas`` as a list)."""
        return {**asdict(self), "betas": list(self.betas)}

    @staticmethod
    def from_value(value: OptimizerSettings | dict[str, Any] | None,
                   default: OptimizerSettings | None = None) -> OptimizerSettings:
        """Settings from an instance, a :meth:`to_dict` dict (a checkpoint's hyper-parameters) or ``None``."""
        if isinstance(value, OptimizerSettings):
            return value
        if value is None:
            return default or OptimizerSettings()
        if not isinstance(value, dict):
            raise SettingError(f"optimizer settings must be a dict, got {type(value).__name__}")
        return OptimizerSettings(**value)

    @property
    def is_constant(self) -> bool:
        return self.warmup_steps == 0 and self.decay == "constant"

    def check_fits(self, max_steps: int) -> None:
        """The warm-up and the decay must fit in a run of ``max_steps`` (a run without ``max_steps`` cannot decay)."""
        if self.decay != "constant" and max_steps <= 0:
            raise SettingError(f"optimizer.decay {self.decay!r} decays over the last steps of the run: set "
                               f"trainer.max_steps")
        if max_steps > 0 and self.warmup_steps + self.decay_steps > max_steps:
            raise SettingError(f"optimizer.warmup_steps ({self.warmup_steps}) + optimizer.decay_steps "
                               f"({self.decay_steps}) exceed trainer.max_steps ({max_steps})")


def lr_factor(schedule: OptimizerSettings, step: int, max_steps: int) -> float:
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


__all__ = ["DECAYS", "OptimizerSettings", "lr_factor"]
