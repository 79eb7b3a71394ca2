"""Synthetic activations with a known ground-truth dictionary, to check that an SAE finds the true features.

Each token is a sparse non-negative combination of ``n_features`` unit directions plus a fixed offset and
Gaussian noise. Batch ``i`` is a pure function of ``(seed, i)``, so any stream position can be regenerated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from canon_pl.errors import SettingError


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
        if not isinstance(n_features, int) or n_features < 1:
            raise SettingError(f"n_features must be a whole number >= 1 (the true directions), got {n_features!r}")
        if not 0 < active_per_token <= n_features:
            raise SettingError(f"active_per_token={active_per_token} must be in (0, n_features={n_features}]")
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


class PlantedHierarchyActivations:
    """A seeded source of ``[batch, d_in]`` activations with a planted feature hierarchy, for checking stitching where
    the answer is known (Leask et al. 2025's two kinds of latent):

    - ``n_parents`` parent directions, each of which splits into ``children_per_parent`` children
      ``normalize(parent + split_strength * s_c)`` (the ``s_c`` orthogonal to every parent). A token uses a parent
      family with probability ``parent_probability``, through one of its children chosen uniformly. A narrow SAE
      affords one latent per family (the parent); a wide one affords the children: *reconstruction* latents.
    - ``n_novel`` directions, each active with probability ``novel_probability``: rarer than a parent family, so the
      narrow SAE spends no latent on them and the wide one does: *novel* latents.

    Coefficients are uniform in [0.5, 1.5]; all directions are orthonormal before the children are formed, so
    ``d_in >= n_parents * (1 + children_per_parent) + n_novel`` (checked). Batch ``i`` is a pure function of
    ``(seed, i)``.
    """

    def __init__(self, d_in: int = 32, n_parents: int = 6, children_per_parent: int = 2, n_novel: int = 4,
                 parent_probability: float = 0.15, novel_probability: float = 0.03, split_strength: float = 0.6,
                 noise_std: float = 0.0, seed: int = 0) -> None:
        n_directions = n_parents * (1 + children_per_parent) + n_novel
        if d_in < n_directions:
            raise ValueError(f"d_in={d_in} cannot hold {n_directions} orthogonal directions ({n_parents} parents, "
                             f"{n_parents * children_per_parent} split directions, {n_novel} novel); raise d_in")
        if not (0 < parent_probability <= 1 and 0 <= novel_probability <= 1 and children_per_parent >= 2):
            raise ValueError(f"need 0 < parent_probability <= 1, 0 <= novel_probability <= 1 and "
                             f"children_per_parent >= 2, got {parent_probability}, {novel_probability}, "
                             f"{children_per_parent}")
        self.d_in, self.seed, self.noise_std = d_in, seed, noise_std
        self.n_parents, self.children_per_parent, self.n_novel = n_parents, children_per_parent, n_novel
        self.parent_probability, self.novel_probability = parent_probability, novel_probability
        g = torch.Generator().manual_seed(seed)
        basis = torch.linalg.qr(torch.randn(d_in, n_directions, generator=g))[0].T  # [n_directions, d_in] orthonormal
        self.parents = basis[:n_parents]
        splits = basis[n_parents:n_parents * (1 + children_per_parent)].view(n_parents, children_per_parent, d_in)
        splits = splits - splits.mean(dim=1, keepdim=True)  # the children average back to the parent direction
        self.children = F.normalize(self.parents[:, None] + split_strength * F.normalize(splits, dim=-1), dim=-1)
        self.novel = basis[n_parents * (1 + children_per_parent):]

    @property
    def children_flat(self) -> Tensor:
        """``[n_parents * children_per_parent, d_in]``: parent ``p``'s children are rows ``p * c ... p * c + c - 1``."""
        return self.children.reshape(-1, self.d_in)

    def batch(self, index: int, batch_size: int) -> Tensor:
        """Batch number ``index`` of the stream: ``[batch_size, d_in]`` float32 (deterministic)."""
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + index + 1) % (2**63 - 1))
        n_p, n_c = self.n_parents, self.children_per_parent
        family_on = torch.rand(batch_size, n_p, generator=g) < self.parent_probability
        child = torch.randint(n_c, (batch_size, n_p), generator=g)
        coef = (0.5 + torch.rand(batch_size, n_p, generator=g)) * family_on
        child_coef = torch.zeros(batch_size, n_p, n_c).scatter_(2, child[..., None], coef[..., None])
        novel_on = torch.rand(batch_size, self.n_novel, generator=g) < self.novel_probability
        novel_coef = (0.5 + torch.rand(batch_size, self.n_novel, generator=g)) * novel_on
        x = child_coef.view(batch_size, -1) @ self.children_flat + novel_coef @ self.novel
        return x + self.noise_std * torch.randn(batch_size, self.d_in, generator=g)
