"""TopK SAE (Gao et al. 2024): the top ``k`` activations of each token survive, in training and inference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from canon_pl.distributed import all_reduce
from canon_pl.sae.base import SparseActivations, SparseAutoencoder
from canon_pl.sae.settings import SAESettings


@dataclass(frozen=True)
class TopKSettings(SAESettings):
    """A TopK SAE: exactly ``k`` latents per token."""

    architecture = "topk"
    k: int = 32
    """Active latents per token."""


class TopKSAE(SparseAutoencoder):
    """Exactly ``k`` latents per token (fewer only where fewer pre-activations are positive)."""

    architecture = "topk"
    selects_k = True
    latents_independent = False  # k latents per token are chosen jointly
    saelens_architecture = "topk"

    @classmethod
    def describe(cls, cfg: dict[str, object]) -> str:
        return f"TopK (k = {cfg.get('k')})"

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
