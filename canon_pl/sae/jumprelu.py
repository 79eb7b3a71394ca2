"""JumpReLU SAE (Rajamanoharan et al. 2024; Gemma Scope, SAELens ``jumprelu``): each latent fires when its
pre-activation exceeds its own threshold, ``f = relu(pre) * (pre > θ)``, strictly.

canon-pl reads JumpReLU SAEs for analysis (stitching, meta-SAEs, statistics, the viewer) and writes them; it does not
train them (that needs a straight-through estimator of the threshold's gradient): train ``batchtopk``, whose inference
is the same rule with one θ shared by all latents.
"""

from __future__ import annotations

import torch
from torch import Tensor

from canon_pl.sae.base import SparseActivations, SparseAutoencoder, TrainStepOutput
from canon_pl.sae.batchtopk import threshold_select
from canon_pl.sae.config import SAEConfig, SAEConfigError


class JumpReLUSAE(SparseAutoencoder):
    """Per-latent thresholds ``threshold [d_sae]``; the same selection in training and inference."""

    architecture = "jumprelu"

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.threshold = torch.zeros(cfg.d_sae)
        self.threshold_initialized.fill_(True)

    def select(self, pre: Tensor, inference: bool) -> SparseActivations:
        """pre: ``relu`` of the pre-activation ``[batch, d_sae]``. A negative θ lets nothing more through than θ = 0
        (``relu(p) = 0`` there), so it is clamped for the count of active latents to match."""
        return threshold_select(pre, self.threshold.clamp_min(0.0))

    def training_forward(self, x: Tensor) -> TrainStepOutput:
        raise SAEConfigError(
            "canon-pl does not train JumpReLU SAEs (imported ones are for analysis); train architecture "
            "'batchtopk', whose inference uses the same thresholded rule"
        )
