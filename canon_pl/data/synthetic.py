"""Synthetic activations with a known ground-truth dictionary, to check that an SAE finds the true features.

Each token is a sparse non-negative combination of ``n_features`` unit directions plus a fixed offset and
Gaussian noise. Batch ``i`` is a pure function of ``(seed, i)``, so any stream position can be regenerated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class SyntheticSparseActivations:
    """A seeded source of ``[batch, d_in]`` activations built from ``dictionary [n_features, d_in]``."""

    def __init__(
        self,
        d_in: int,
        n_features: int,
        active_per_token: float = 4.0,
        noise_std: float = 0.01,
        offset_norm: float = 1.0,
        seed: int = 0,
    ) -> None:
        if not 0 < active_per_token <= n_features:
            raise ValueError(f"active_per_token={active_per_token} must be in (0, n_features={n_features}]")
        self.d_in = d_in
        self.n_features = n_features
        self.active_per_token = active_per_token
        self.noise_std = noise_std
        self.seed = seed
        g = torch.Generator().manual_seed(seed)
        self.dictionary = F.normalize(torch.randn(n_features, d_in, generator=g), dim=-1)
        self.offset = F.normalize(torch.randn(d_in, generator=g), dim=0) * offset_norm

    def batch(self, index: int, batch_size: int) -> Tensor:
        """Batch number ``index`` of the stream: ``[batch_size, d_in]`` float32 (deterministic)."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + index + 1) % (2**63 - 1))
        p = self.active_per_token / self.n_features
        active = torch.rand(batch_size, self.n_features, generator=g) < p
        magnitudes = 0.5 + torch.rand(batch_size, self.n_features, generator=g)
        coefficients = active * magnitudes
        noise = self.noise_std * torch.randn(batch_size, self.d_in, generator=g)
        return coefficients @ self.dictionary + self.offset + noise

    def recovered_fraction(self, W_dec: Tensor, threshold: float = 0.9) -> float:
        """Fraction of true directions with cosine > ``threshold`` to some row of ``W_dec [d_sae, d_in]``."""
        cos = F.normalize(self.dictionary, dim=-1) @ F.normalize(W_dec.detach().float().cpu(), dim=-1).T
        return (cos.max(dim=1).values > threshold).float().mean().item()
