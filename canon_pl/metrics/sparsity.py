"""Sparsity of latent activations as torchmetrics ``Metric``s: L0, dead fraction, firing-density histogram."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric


class MeanL0(Metric):
    """Mean number of non-zero latents per token."""

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("n_active", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_tokens", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, feature_acts: Tensor) -> None:
        """feature_acts: ``[batch, d_sae]``."""
        self.n_active += (feature_acts != 0).sum()
        self.n_tokens += feature_acts.shape[0]

    def compute(self) -> Tensor:
        return (self.n_active / self.n_tokens.clamp_min(1)).float()


class DeadLatentFraction(Metric):
    """Fraction of latents with no activation in the last ``window_tokens`` tokens.

    ``window_tokens=None`` counts a latent dead if it never fired in all the tokens seen since the last reset.
    Across ranks a latent is alive if it fired on any rank: recently (``min`` of the per-rank counters) or ever
    (``max`` of the per-rank flags), whatever the number of tokens each rank saw.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, d_sae: int, window_tokens: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.window_tokens = window_tokens
        self.add_state("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long), dist_reduce_fx="min")
        self.add_state("ever_fired", torch.zeros(d_sae, dtype=torch.long), dist_reduce_fx="max")

    def update(self, feature_acts: Tensor) -> None:
        """feature_acts: ``[batch, d_sae]``."""
        fired = (feature_acts != 0).any(dim=0)
        self.tokens_since_fired += feature_acts.shape[0]
        self.tokens_since_fired[fired] = 0
        self.ever_fired[fired] = 1

    def compute(self) -> Tensor:
        if self.window_tokens is None:
            dead = self.ever_fired == 0
        else:
            dead = self.tokens_since_fired >= self.window_tokens
        return dead.float().mean()


class FiringDensity(NamedTuple):
    """densities: ``[d_sae]`` fraction of tokens each latent fires on; counts: ``[n_bins]`` latents per
    log10-density bin; bin_edges: ``[n_bins + 1]`` in log10 units; never_fired: latents with density 0."""

    densities: Tensor
    counts: Tensor
    bin_edges: Tensor
    never_fired: int


class FiringDensityHistogram(Metric):
    """Histogram of log10 firing frequency over latents (the standard SAE density plot)."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, d_sae: int, n_bins: int = 40, min_log10: float = -8.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_bins = n_bins
        self.min_log10 = min_log10
        self.add_state("fire_counts", torch.zeros(d_sae, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_tokens", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, feature_acts: Tensor) -> None:
        """feature_acts: ``[batch, d_sae]``."""
        self.fire_counts += (feature_acts != 0).sum(dim=0)
        self.n_tokens += feature_acts.shape[0]

    def compute(self) -> FiringDensity:
        densities = (self.fire_counts / self.n_tokens.clamp_min(1)).float()
        alive = densities > 0
        log_density = densities[alive].log10().clamp_min(self.min_log10)
        edges = torch.linspace(self.min_log10, 0.0, self.n_bins + 1, device=densities.device)
        counts = torch.histc(log_density, bins=self.n_bins, min=self.min_log10, max=0.0)
        return FiringDensity(densities, counts.long(), edges, int((~alive).sum()))
