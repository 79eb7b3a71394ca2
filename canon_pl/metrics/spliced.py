"""Aggregation of spliced next-token losses into CE recovered, ΔCE and KL (docs/design.md 1.4)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

KEYS = ("ce_clean", "ce_spliced", "ce_zero", "kl", "n_tokens")


class SplicedLanguageModelLoss(Metric):
    """Accumulates the sums of :func:`canon_pl.lm.spliced.spliced_loss_sums`; ``compute`` gives means and
    ``ce_recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean)``, ``delta_ce = CE_sae − CE_clean``."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for key in KEYS:
            self.add_state(key, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, sums: dict[str, Tensor]) -> None:
        for key in KEYS:
            setattr(self, key, getattr(self, key) + sums[key].to(self.device, torch.float64))

    def compute(self) -> dict[str, Tensor]:
        n = self.n_tokens.clamp_min(1)
        clean, sae, zero = self.ce_clean / n, self.ce_spliced / n, self.ce_zero / n
        return {
            "ce_clean": clean.float(),
            "ce_sae": sae.float(),
            "ce_zero": zero.float(),
            "ce_recovered": ((zero - sae) / (zero - clean)).float(),
            "delta_ce": (sae - clean).float(),
            "kl": (self.kl / n).float(),
        }
