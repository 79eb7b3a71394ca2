"""ReLU SAE with an L1 penalty (Bricken et al. 2023; decoder rows unit norm, so L1 needs no norm weighting)."""

from __future__ import annotations

from torch import Tensor

from canon_pl.sae.base import SparseAutoencoder


class ReLUSAE(SparseAutoencoder):
    """Every positive pre-activation survives; sparsity comes from ``l1_coefficient * sum |f|``."""

    architecture = "relu"

    def select(self, pre: Tensor, inference: bool) -> Tensor:
        return pre

    def sparsity_losses(self, feature_acts: Tensor | None) -> dict[str, Tensor]:
        """L1 of the activations ``[batch, d_sae]``, summed over latents, averaged over tokens and d_in."""
        return {"l1": self.cfg.l1_coefficient * feature_acts.sum(dim=-1).mean() / self.d_in}
