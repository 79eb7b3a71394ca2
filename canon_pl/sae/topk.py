"""TopK SAE (Gao et al. 2024): the top ``k`` activations of each token survive, in training and inference."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from canon_pl.distributed import all_reduce
from canon_pl.sae.base import SparseActivations, SparseAutoencoder
from canon_pl.sae.config import SAEConfigError, SAESettings


@dataclass(frozen=True)
class TopKSettings(SAESettings):
    """A TopK SAE: exactly ``k`` latents per token."""

    architecture = "topk"
    k: int = 32
    """Active latents per token."""
    threshold_momentum: float = 0.9
    """EMA momentum of the inference threshold (smallest kept activation per batch). About ten batches:
    pre-activations shrink during training and a longer average lags behind (0.99 left the threshold 35% above the
    final batches' value after 250 steps on SmolLM2, so held-out L0 was 20 instead of k = 32)."""

    def validate(self) -> None:
        super().validate()
        if isinstance(self.k, bool) or not isinstance(self.k, int):
            raise SAEConfigError(f"k={self.k!r} must be a whole number (active latents per token)")
        if not 0.0 <= self.threshold_momentum < 1.0:
            raise SAEConfigError(f"threshold_momentum must be in [0, 1), got {self.threshold_momentum}")

    def check_width(self, d_sae: int) -> None:
        if not 0 < self.k <= d_sae:
            raise SAEConfigError(f"k={self.k} must be between 1 and d_sae={d_sae}: a token cannot use more latents "
                                 f"than the SAE has; lower k or raise d_sae")

    def fitted_to(self, d_sae: int) -> TopKSettings:
        return replace(self, k=min(self.k, d_sae))

    def describe(self) -> str:
        return f"TopK (k = {self.k})"


class TopKSAE(SparseAutoencoder):
    """Exactly ``k`` latents per token (fewer only where fewer pre-activations are positive)."""

    architecture = "topk"
    latents_independent = False  # k latents per token are chosen jointly
    saelens_architecture = "topk"

    def saelens_config(self) -> dict[str, object]:
        return {"k": self.cfg.k, "rescale_acts_by_decoder_norm": False}

    def select(self, pre: Tensor, inference: bool) -> SparseActivations:
        batch = pre.shape[0]
        values, cols = pre.topk(self.cfg.k, dim=-1, sorted=False)  # [batch, k]
        rows = torch.arange(batch, device=pre.device).repeat_interleave(self.cfg.k)
        values, cols = values.reshape(-1), cols.reshape(-1)
        keep = values > 0
        if self.training and not inference:
            # The smallest kept activation of the global batch (every rank takes part, even with nothing kept).
            smallest = values.detach()[keep].min() if bool(keep.any()) else values.new_tensor(float("inf"))
            smallest = all_reduce(smallest, "min")
            if torch.isfinite(smallest):
                self.update_threshold(smallest)
        return SparseActivations(rows=rows[keep], cols=cols[keep], values=values[keep], batch_size=batch)
