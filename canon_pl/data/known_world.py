"""A known-answer world: activations generated from a ground-truth dictionary with the structure the paper argues
about planted in it, so every instrument can be scored against the truth (issue 52; SynthSAEBench and the toy models
of superposition are the anchors).

The true dictionary has three kinds of feature, each a unit direction in ``d_in`` dimensions:

- **plain** features: independent random directions.
- **children** of a hierarchy: ``n_families`` parent directions, each with ``children_per_family`` children
  ``parent_cosine * parent + sqrt(1 - parent_cosine**2) * u`` (``u`` a random unit direction orthogonal to the
  parent). A child's direction carries its parent, so the parent is present whenever a child fires. A narrow SAE
  affords one latent for a family (its parent), a wide one its children: *reconstruction* latents by construction.
- **composite** features: the normalised sum of ``components_per_feature`` of ``n_components`` shared directions
  (plus ``own_weight`` of a direction of their own). Each fires as one unit ("Einstein"), so an SAE learns it as one
  latent, and a meta-SAE on the decoder finds the shared directions: *meta-latents* by construction.

Frequencies follow a power law over a seeded random ranking of the *units* (a plain feature, a family, a composite
feature): unit of rank ``r`` fires with probability proportional to ``(r + 1) ** -frequency_exponent``, scaled so a
token holds ``active_per_token`` units on average; a family's probability is shared equally by its children. The
rare tail is what a narrow SAE cannot afford and a wide one can: *novel* latents by construction. Each feature has a
magnitude from its own power law (``magnitude_exponent``); an occurrence's coefficient is that magnitude times a
uniform factor in ``[0.5, 1.5]``.

:meth:`WorldSpec.null` (``planted: false``) is the **null world**: the same number of features with the same
frequencies and magnitudes, every one a plain random direction (no hierarchy, no composition).

A token holds ``Poisson(active_per_token)`` feature draws from the frequencies (with replacement; a repeated feature
adds its coefficients), so generating a batch costs ``O(batch * active_per_token * d_in)``. Batch ``i`` is a pure
function of ``(seed, i)``: unlimited unique samples, any stream position regenerated exactly. The truth
(:meth:`KnownWorld.truth_tensors`) is written beside the data by ``canon-pl synth``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from canon_pl.data.world_spec import WorldSpec
from canon_pl.errors import SettingError

PLAIN, CHILD, COMPOSITE = 0, 1, 2
KIND_NAMES = ("plain", "child", "composite")
"""``kind`` codes of the true features (index = code)."""
MAX_FREQUENCY = 0.5
"""Highest per-token firing probability a feature may have (a feature that fires on most tokens is a bias)."""


class ActiveFeatures(NamedTuple):
    """Which true features a batch holds, one entry per draw: ``token [n]``, ``feature [n]``, ``coefficient [n]``."""

    token: Tensor
    feature: Tensor
    coefficient: Tensor


def _random_directions(n: int, d_in: int, g: torch.Generator) -> Tensor:
    """``[n, d_in]`` random unit rows."""
    return F.normalize(torch.randn(n, d_in, generator=g), dim=-1)


def _distinct_subsets(n: int, pool: int, size: int, g: torch.Generator) -> list[list[int]]:
    """``n`` distinct random ``size``-subsets of ``range(pool)``, each as ``[row, *members]`` (two composites made of
    the same shared directions would be one feature twice)."""
    if n > math.comb(pool, size):
        raise SettingError(f"{n} composite features need distinct sets of {size} of {pool} shared directions, but "
                           f"there are only {math.comb(pool, size)}: raise world.n_components")
    seen: set[tuple[int, ...]] = set()
    rows: list[list[int]] = []
    while len(rows) < n:
        members = tuple(sorted(torch.randperm(pool, generator=g)[:size].tolist()))
        if members not in seen:
            seen.add(members)
            rows.append([len(rows), *members])
    return rows


class KnownWorld:
    """The ground truth of a :class:`WorldSpec` and its activation stream.

    Tensors (``F = spec.n_features`` true features, in the order plain, children by family, composite):
    ``directions [F, d_in]`` unit rows, ``kind [F]`` (:data:`KIND_NAMES` codes), ``family [F]`` (a child's family,
    -1 otherwise), ``frequency [F]`` (per-token firing probability), ``magnitude [F]``, ``parents [n_families, d_in]``,
    ``components [n_components, d_in]`` and ``composition [F, n_components]`` (each feature's direction in the shared
    directions' coefficients; zero rows for plain features and children).
    """

    def __init__(self, spec: WorldSpec | dict[str, Any]) -> None:
        spec = WorldSpec.from_value(spec)
        self.spec = spec
        d, g = spec.d_in, torch.Generator().manual_seed(spec.seed)
        plain = _random_directions(spec.n_plain, d, g)
        self.parents = _random_directions(spec.n_families, d, g)
        c = spec.children_per_family
        own = torch.randn(spec.n_families, c, d, generator=g)
        own = own - (own * self.parents[:, None]).sum(-1, keepdim=True) * self.parents[:, None]  # orthogonal to parent
        children = (spec.parent_cosine * self.parents[:, None]
                    + math.sqrt(1 - spec.parent_cosine ** 2) * F.normalize(own, dim=-1)).reshape(-1, d)
        self.components = _random_directions(spec.n_components, d, g)
        weights = torch.zeros(spec.n_composite, spec.n_components)
        for row in _distinct_subsets(spec.n_composite, spec.n_components, spec.components_per_feature, g):
            weights[row[0], row[1:]] = 1.0
        composite = weights @ self.components + spec.own_weight * _random_directions(spec.n_composite, d, g)
        norms = composite.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.directions = torch.cat([plain, children, composite / norms])
        n_children = spec.n_families * c
        self.kind = torch.cat([torch.full((spec.n_plain,), PLAIN), torch.full((n_children,), CHILD),
                               torch.full((spec.n_composite,), COMPOSITE)])
        self.family = torch.cat([torch.full((spec.n_plain,), -1), torch.arange(spec.n_families).repeat_interleave(c),
                                 torch.full((spec.n_composite,), -1)])
        self.composition = torch.cat([torch.zeros(spec.n_plain + n_children, spec.n_components), weights / norms])
        # units: plain features, families, composites; each draws a rank, the rank its probability
        rank = torch.randperm(spec.n_units, generator=g)
        unit_p = (rank.double() + 1) ** -spec.frequency_exponent
        unit_p = unit_p / unit_p.sum() * spec.active_per_token
        if float(unit_p.max()) > MAX_FREQUENCY:
            raise SettingError(f"the most frequent unit would fire on {float(unit_p.max()):.0%} of tokens (at most "
                               f"{MAX_FREQUENCY:.0%}): lower world.active_per_token or world.frequency_exponent")
        p_plain, p_family, p_composite = unit_p.split([spec.n_plain, spec.n_families, spec.n_composite])
        self.frequency = torch.cat([p_plain, (p_family / c).repeat_interleave(c), p_composite]).float()
        magnitude_rank = torch.randperm(spec.n_features, generator=g)
        magnitude = (magnitude_rank.double() + 1) ** -spec.magnitude_exponent
        self.magnitude = (magnitude / magnitude.max()).float()
        if not spec.planted:  # the null world: the same frequencies and magnitudes on unrelated directions
            self.directions = _random_directions(spec.n_features, d, g)
            self.kind = torch.full((spec.n_features,), PLAIN)
            self.family = torch.full((spec.n_features,), -1)
            self.parents, self.components = torch.zeros(0, d), torch.zeros(0, d)
            self.composition = torch.zeros(spec.n_features, 0)
        self._draw_p = self.frequency.double() / self.frequency.double().sum()

    @property
    def d_in(self) -> int:
        return self.spec.d_in

    @property
    def n_features(self) -> int:
        return self.spec.n_features

    def active(self, index: int, batch_size: int) -> ActiveFeatures:
        """The true features of batch ``index`` (``batch_size`` tokens), one entry per draw (deterministic)."""
        g = torch.Generator().manual_seed((self.spec.seed * 1_000_003 + index + 1) % (2**63 - 1))
        counts = torch.poisson(torch.full((batch_size,), float(self.spec.active_per_token)), generator=g).long()
        total = int(counts.sum())
        feature = torch.multinomial(self._draw_p, max(total, 1), replacement=True, generator=g)[:total]
        token = torch.repeat_interleave(torch.arange(batch_size), counts)
        coefficient = self.magnitude[feature] * (0.5 + torch.rand(total, generator=g))
        return ActiveFeatures(token, feature, coefficient)

    def batch_with_truth(self, index: int, batch_size: int) -> tuple[Tensor, ActiveFeatures]:
        """Batch ``index``: activations ``[batch_size, d_in]`` float32 and the features that made them."""
        active = self.active(index, batch_size)
        offsets = torch.searchsorted(active.token, torch.arange(batch_size))  # each token's first draw
        x = F.embedding_bag(active.feature, self.directions, offsets, mode="sum",
                            per_sample_weights=active.coefficient)
        if self.spec.noise_std:
            g = torch.Generator().manual_seed((self.spec.seed * 1_000_003 - index - 1) % (2**63 - 1))
            x = x + self.spec.noise_std * torch.randn(batch_size, self.d_in, generator=g)
        return x, active

    def batch(self, index: int, batch_size: int) -> Tensor:
        """Batch number ``index`` of the stream: ``[batch_size, d_in]`` float32 (deterministic)."""
        return self.batch_with_truth(index, batch_size)[0]

    def truth_tensors(self) -> dict[str, Tensor]:
        """Every tensor of the truth (the class docstring lists them), as ``canon-pl synth`` writes them."""
        return {"directions": self.directions, "kind": self.kind, "family": self.family,
                "frequency": self.frequency, "magnitude": self.magnitude, "parents": self.parents,
                "components": self.components, "composition": self.composition}

    def describe(self) -> dict[str, Any]:
        """What a report says of the world: its spec and how many features of each kind it holds."""
        counts = {name: int((self.kind == code).sum()) for code, name in enumerate(KIND_NAMES)}
        return {"spec": self.spec.to_dict(), "n_features": self.n_features, "features_by_kind": counts,
                "frequency_range": [float(self.frequency.min()), float(self.frequency.max())]}


__all__ = ["ActiveFeatures", "CHILD", "COMPOSITE", "KIND_NAMES", "KnownWorld", "PLAIN", "WorldSpec"]
