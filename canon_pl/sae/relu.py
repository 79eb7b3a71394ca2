"""ReLU SAE with an L1 penalty (Bricken et al. 2023; decoder rows unit norm, so L1 needs no norm weighting).

Training with ``kernel="sparse"`` (the default) takes the same fast path as the TopK family: the gradient of
``relu`` is zero wherever a pre-activation is not positive, so only the positive entries (L0 per token, tens out of
thousands) enter the graph; the L1 term is their sum. ``kernel="dense"`` is the plain formula, the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from canon_pl.checks import check_counts
from canon_pl.sae.base import SparseActivations, SparseAutoencoder
from canon_pl.sae.batchtopk import threshold_select
from canon_pl.sae.flops import dense_step_flops
from canon_pl.sae.config import SAEConfigError, SAESettings


@dataclass(frozen=True)
class ReLUSettings(SAESettings):
    """A ReLU + L1 SAE, as the paper's stitching SAEs."""

    architecture = "relu"
    training_only = ("l1_warmup_steps",)
    default_aux_coefficient = 0.0  # ReLU + L1 SAEs in the literature train without AuxK
    l1_coefficient: float = 5.0
    """Weight of the L1 penalty."""
    l1_warmup_steps: int = 0
    """Steps over which the L1 weight rises linearly from 0 to ``l1_coefficient`` (0 = full weight from the first
    step): latents move away from their initialisation before the penalty silences them."""

    def validate(self) -> None:
        super().validate()
        check_counts(0, l1_warmup_steps=self.l1_warmup_steps)
        if not (isinstance(self.l1_coefficient, (int, float)) and math.isfinite(self.l1_coefficient)
                and self.l1_coefficient >= 0):
            raise SAEConfigError(f"l1_coefficient must be a finite number >= 0, got {self.l1_coefficient}")

    def describe(self) -> str:
        return f"ReLU + L1 (L1 coefficient {self.l1_coefficient}, AuxK weight {self.aux_coefficient})"


class ReLUSAE(SparseAutoencoder):
    """Every positive pre-activation survives; sparsity comes from ``l1_coefficient * sum |f|``."""

    architecture = "relu"
    saelens_architecture = "standard"

    def select(self, pre: Tensor, inference: bool) -> SparseActivations | Tensor:
        """pre: ``[batch, d_sae]`` non-negative. In training with the sparse kernel, its positive entries as
        :class:`SparseActivations` (decoded with ``embedding_bag``); otherwise ``pre`` itself, dense."""
        if inference or self.cfg.kernel == "dense":
            return pre
        return threshold_select(pre, pre.new_zeros(()))

    def training_flops(self, batch: int, active_per_token: float) -> int:
        """The dense kernel decodes densely too (:func:`canon_pl.sae.flops.dense_step_flops`)."""
        if self.cfg.kernel == "dense":
            return dense_step_flops(batch, self.d_in, self.d_sae)
        return super().training_flops(batch, active_per_token)

    def sparsity_losses(self, acts: SparseActivations | Tensor) -> dict[str, Tensor]:
        """L1 of the activations (sparse, or dense ``[batch, d_sae]``), summed over latents, averaged over tokens and
        divided by d_in."""
        if isinstance(acts, SparseActivations):
            total = acts.values.sum() / max(acts.batch_size, 1)
        else:
            total = acts.sum(dim=-1).mean()
        return {"l1": self.cfg.l1_coefficient * total / self.d_in}
