"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen, Nanda 2025; dictionary_learning's
``MatryoshkaBatchTopKSAE``): one dictionary whose nested prefixes — the first ``m`` latents, for each prefix size
``m`` — are each trained to reconstruct on their own. Selection and inference are BatchTopK's (one batch top-k over
every latent, one threshold); the loss is the mean over the prefixes of each prefix's MSE, the full width included:

    loss = mean_m  MSE( sum_{j < m} f_j W_dec[j] + b_dec ,  x )   (+ AuxK)

A prefix is itself an SAE of width ``m`` (:meth:`MatryoshkaBatchTopKSAE.prefix`), so one Matryoshka SAE exports as a
family of widths.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from canon_pl.checks import check_positive
from canon_pl.sae.base import SparseActivations, SparseAutoencoder
from canon_pl.sae.batchtopk import BatchTopKSAE, BatchTopKSettings
from canon_pl.sae.config import SAEConfigError


@dataclass(frozen=True)
class MatryoshkaBatchTopKSettings(BatchTopKSettings):
    """A Matryoshka BatchTopK SAE: BatchTopK with the mean reconstruction loss of nested prefixes."""

    architecture = "matryoshka_batchtopk"
    prefix_fractions: tuple[float, ...] = (0.0625, 0.125, 0.25, 0.5)
    """Prefix sizes as fractions of the SAE's width (each in (0, 1); the full width is always the last prefix):
    a 9216-latent SAE with the default trains its first 576, 1152, 2304, 4608 and all 9216 latents to reconstruct."""

    def validate(self) -> None:
        super().validate()
        object.__setattr__(self, "prefix_fractions", tuple(self.prefix_fractions))  # a JSON list reads as a tuple
        if not self.prefix_fractions:
            raise SAEConfigError("prefix_fractions must name at least one prefix, e.g. [0.25, 0.5]")
        if not all(isinstance(f, (int, float)) and math.isfinite(f) for f in self.prefix_fractions):
            raise SAEConfigError(f"prefix_fractions must be finite numbers in (0, 1), "
                                 f"got {list(self.prefix_fractions)}")
        check_positive(prefix_fractions=min(self.prefix_fractions))
        if max(self.prefix_fractions) >= 1:
            raise SAEConfigError(f"prefix_fractions must lie in (0, 1) (the full width is always a prefix), got "
                                 f"{list(self.prefix_fractions)}")

    def describe(self) -> str:
        return self.architecture


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    """BatchTopK selection and inference; every nested prefix of the latents trained to reconstruct alone."""

    architecture = "matryoshka_batchtopk"

    @property
    def prefix_sizes(self) -> list[int]:
        """Widths of the nested prefixes, ascending, ending with ``d_sae``."""
        sizes = {max(1, round(float(f) * self.d_sae)) for f in self.cfg.prefix_fractions}
        return sorted(sizes - {self.d_sae}) + [self.d_sae]

    def saelens_config(self) -> dict[str, object]:
        """SAELens saves a Matryoshka BatchTopK SAE as jumprelu, its level widths and k in the metadata."""
        return {"metadata": {"training_architecture": self.architecture, "training_architecture_details": {
            "matryoshka_widths": list(self.prefix_sizes), "k": self.cfg.k}}}

    def reconstruction_loss(self, acts: SparseActivations | Tensor, x: Tensor, x_hat: Tensor) -> Tensor:
        """Mean over :attr:`prefix_sizes` of the MSE of each prefix's reconstruction (the last one is ``x_hat``).
        acts: the batch's activations (sparse in training); x, x_hat: ``[batch, d_in]``."""
        losses = [F.mse_loss(self.prefix_reconstruction(acts, m), x) for m in self.prefix_sizes[:-1]]
        return torch.stack([*losses, F.mse_loss(x_hat, x)]).mean()

    def prefix_reconstruction(self, acts: SparseActivations | Tensor, m: int) -> Tensor:
        """``sum_{j < m} f_j W_dec[j] + b_dec`` ``[batch, d_in]`` of activations (sparse or ``[batch, d_sae]``)."""
        if isinstance(acts, Tensor):
            return acts[:, :m] @ self.W_dec[:m] + self.b_dec
        inside = acts.cols < m
        return self.decode_sparse(SparseActivations(acts.rows[inside], acts.cols[inside], acts.values[inside],
                                                    acts.batch_size))

    @torch.no_grad()
    def prefix(self, m: int) -> SparseAutoencoder:
        """The first ``m`` latents as a BatchTopK SAE of width ``m`` (same threshold, biases and hook point): what a
        prefix computes at inference."""
        if not 0 < m <= self.d_sae:
            raise SAEConfigError(f"a prefix has 1 to {self.d_sae} latents, got {m}")
        sae = BatchTopKSAE(self.cfg.for_width(m, BatchTopKSAE.architecture))
        sae.load_state_dict(self.latent_state(torch.arange(m, device=self.W_dec.device)))
        return sae.train(self.training)


__all__ = ["MatryoshkaBatchTopKSAE", "MatryoshkaBatchTopKSettings"]
