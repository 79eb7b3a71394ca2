"""Aggregation of spliced next-token losses into CE recovered, ΔCE and KL (docs/design.md 1.4)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import Metric

KEYS = ("ce_clean", "ce_spliced", "ce_zero", "kl", "kl_zero", "n_tokens")


class SplicedLanguageModelLoss(Metric):
    """Accumulates the sums of :func:`canon_pl.lm.spliced.spliced_loss_sums`; ``compute`` gives means and
    ``ce_recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean)``, ``delta_ce = CE_sae − CE_clean``, ``kl`` (clean ‖
    spliced) and ``kl_zero`` (clean ‖ zero-ablated) per token, and ``kl_recovered = (KL_zero − KL) / KL_zero``
    (SAEBench's ``kl_div_score``)."""

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
            "kl_zero": (self.kl_zero / n).float(),
            "kl_recovered": ((self.kl_zero - self.kl) / self.kl_zero.clamp_min(1e-30)).float(),
        }


Reconstruction = Callable[[Tensor], Tensor]
SplicedLoss = Callable[[dict[str, Reconstruction]], dict[str, dict[str, float]]]
"""Given named reconstruction functions ``[n, d_in] -> [n, d_in]``, the LM's next-token loss with each spliced in:
``{name: {"ce_sae", "ce_clean", "ce_zero", "ce_recovered", ...}}`` (see :func:`spliced_loss_on`)."""


def spliced_loss_on(spliced_sums: Callable[..., dict[str, dict[str, Tensor]]],
                    batches: list[tuple[Tensor, Tensor]]) -> SplicedLoss:
    """A :data:`SplicedLoss` over fixed ``(tokens [n_ctx, seq], mask [n_ctx, seq])`` batches, given a
    ``spliced_sums(tokens, mask, reconstructions)`` such as ``ActivationDataModule.spliced_sums``."""

    def loss(reconstructions: dict[str, Reconstruction]) -> dict[str, dict[str, float]]:
        metrics = {name: SplicedLanguageModelLoss() for name in reconstructions}
        for tokens, mask in batches:
            for name, sums in spliced_sums(tokens, mask, reconstructions).items():
                metrics[name].update(sums)
        return {name: {k: float(v) for k, v in m.compute().items()} for name, m in metrics.items()}

    return loss
