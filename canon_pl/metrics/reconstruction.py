"""Reconstruction quality as torchmetrics ``Metric``s (docs/design.md 1.4), aggregated in float64 across batches and ranks."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class FractionOfVarianceUnexplained(Metric):
    """FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over all evaluated tokens (mean taken per dimension)."""

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("sum_squared_error", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_x", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_squared_x", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_tokens", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x_hat: Tensor, x: Tensor) -> None:
        """x_hat, x: ``[batch, d_in]``."""
        if x_hat.shape != x.shape:
            raise ValueError(f"x_hat {tuple(x_hat.shape)} and x {tuple(x.shape)} must have the same shape")
        x64 = x.detach().double()
        self.sum_squared_error += (x_hat.detach().double() - x64).pow(2).sum()
        self.sum_x = self.sum_x + x64.sum(dim=0)  # becomes [d_in] on the first update
        self.sum_squared_x += x64.pow(2).sum()
        self.n_tokens += x.shape[0]

    def compute(self) -> Tensor:
        total_variance = self.sum_squared_x - self.sum_x.pow(2).sum() / self.n_tokens.clamp_min(1)
        return (self.sum_squared_error / total_variance.clamp_min(torch.finfo(torch.float64).tiny)).float()


class ExplainedVariance(FractionOfVarianceUnexplained):
    """1 − FVU."""

    higher_is_better = True

    def compute(self) -> Tensor:
        return 1.0 - super().compute()


@torch.no_grad()
def explained_variance_of(sae: torch.nn.Module, x: Tensor, batch_size: int = 8192) -> tuple[float, float]:
    """(explained variance, mean L0) of ``sae`` at inference on activations ``x [n, d_in]``, in batches."""
    metric = ExplainedVariance().to(x.device)
    active = 0.0
    for batch in x.split(batch_size):
        normalized = sae.normalize_input(batch)
        acts = sae.encode(normalized.x, inference=True)
        metric.update(normalized.restore(sae.decode(acts)), batch)
        active += float((acts != 0).sum())
    return float(metric.compute()), active / max(x.shape[0], 1)
