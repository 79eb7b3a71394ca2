"""The settings of a known-answer world (:mod:`canon_pl.data.known_world`): a frozen dataclass with no torch, so
that ``canon-pl synth --help`` and ``canon-pl calibrate --help`` show its fields as flags without importing torch."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from canon_pl.errors import SettingError


@dataclass(frozen=True)
class WorldSpec:
    """Everything that defines a known-answer world; two equal specs generate the same activations.

    Attributes:
        d_in: Width of the activations (576: SmolLM2-135M's residual stream).
        n_plain: Independent features.
        n_families: Hierarchies (parents that split into children).
        children_per_family: Children of each family (at least 2).
        parent_cosine: Cosine of each child to its family's parent direction.
        n_composite: Features composed of shared directions.
        n_components: The shared directions composites are made of.
        components_per_feature: Shared directions in each composite.
        own_weight: Weight of a composite's own random direction beside its unit-weight shared directions (0: it
            lies in the span of the shared directions).
        active_per_token: Mean number of units firing in a token.
        frequency_exponent: Power-law exponent of the units' firing probabilities over their ranks.
        magnitude_exponent: Power-law exponent of the features' magnitudes over a ranking of their own.
        noise_std: Gaussian noise on every coordinate.
        seed: Seed of the dictionary, the ranks and the stream.
        planted: False makes the null world: every feature a plain random direction (no parents, no shared
            directions), with the frequencies and magnitudes the planted world gives them.
    """

    d_in: int = 576
    n_plain: int = 1536
    n_families: int = 192
    children_per_family: int = 4
    parent_cosine: float = 0.8
    n_composite: int = 1024
    n_components: int = 96
    components_per_feature: int = 3
    own_weight: float = 0.5
    active_per_token: float = 24.0
    frequency_exponent: float = 0.5
    magnitude_exponent: float = 0.2
    noise_std: float = 0.0
    seed: int = 0
    planted: bool = True

    def __post_init__(self) -> None:
        counts = {"d_in": self.d_in, "n_plain": self.n_plain, "n_families": self.n_families,
                  "n_composite": self.n_composite, "n_components": self.n_components,
                  "components_per_feature": self.components_per_feature, "seed": self.seed}
        for name, value in counts.items():
            minimum = 1 if name == "d_in" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise SettingError(f"world.{name} must be a whole number >= {minimum}, got {value!r}")
        if not isinstance(self.planted, bool):
            raise SettingError(f"world.planted must be true or false, got {self.planted!r}")
        if self.n_units == 0:
            raise SettingError("the world has no features: set world.n_plain, n_families or n_composite above 0")
        if self.n_families and (not isinstance(self.children_per_family, int) or self.children_per_family < 2):
            raise SettingError(f"world.children_per_family must be a whole number >= 2, got {self.children_per_family!r}")
        if not 0 < self.parent_cosine < 1:
            raise SettingError(f"world.parent_cosine must lie in (0, 1), got {self.parent_cosine!r}")
        if self.n_composite and not 1 <= self.components_per_feature <= self.n_components:
            raise SettingError(f"world.components_per_feature={self.components_per_feature} must lie in "
                               f"[1, n_components={self.n_components}] when the world has composite features")
        for name in ("own_weight", "frequency_exponent", "magnitude_exponent", "noise_std"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise SettingError(f"world.{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.active_per_token, (int, float)) or not 0 < self.active_per_token <= self.n_units:
            raise SettingError(f"world.active_per_token must lie in (0, {self.n_units}] (the world's units), got "
                               f"{self.active_per_token!r}")

    @property
    def n_units(self) -> int:
        """Units that draw a frequency: plain features, families, composite features."""
        return self.n_plain + self.n_families + self.n_composite

    @property
    def n_features(self) -> int:
        """Rows of the true dictionary: plain, children, composite."""
        return self.n_plain + self.n_families * self.children_per_family + self.n_composite

    def null(self) -> WorldSpec:
        """The null world: as many features, with this world's frequencies and magnitudes, all plain."""
        return dataclasses.replace(self, planted=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_value(cls, value: WorldSpec | dict[str, Any]) -> WorldSpec:
        """A spec from itself or its dict (an unknown key is an error that lists the known ones)."""
        if isinstance(value, cls):
            return value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise SettingError(f"unknown world setting(s) {unknown}; a world has {sorted(known)}")
        return cls(**value)


__all__ = ["WorldSpec"]
