"""Decoder-cosine matching between a smaller SAE S and a larger SAE L (docs/design.md 1.2, steps 1-2).

``C = normalize(W_dec^L) @ normalize(W_dec^S).T`` is ``[d_large, d_small]`` and can be 98304 x 49152 (19 GB in
fp32): :func:`match_latents` computes it a block of L-rows at a time and keeps only what the analysis needs — each
L-latent's best S-match, each S-latent's best L-match and the edges with ``cos >= tau``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from canon_pl.errors import CanonError
from canon_pl.paper import DEFAULT_TAU

DEFAULT_BLOCK_BYTES = 256 * 2**20
"""Memory for one block of the cosine matrix; peak memory is about this plus the two decoders."""


class StitchingError(CanonError, ValueError):
    """Two SAEs (or a setting) that cannot be matched or stitched as asked (raised here and by
    :mod:`canon_pl.stitching`, which builds on this matching)."""


def check_tau(tau: float) -> float:
    """The cosine threshold must lie strictly between 0 and 1."""
    if not 0.0 < float(tau) < 1.0:
        raise StitchingError(f"tau must lie strictly between 0 and 1 (the paper uses 0.7), got {tau}")
    return float(tau)


def decoder_cosine_matrix(W_dec_large: Tensor, W_dec_small: Tensor) -> Tensor:
    """The full cosine matrix ``[d_large, d_small]`` of two decoders ``[d_large, d_in]`` and ``[d_small, d_in]``.

    Only for SAEs small enough that ``d_large * d_small`` floats fit in memory; :func:`match_latents` never builds it.
    """
    return F.normalize(W_dec_large.float(), dim=-1) @ F.normalize(W_dec_small.float(), dim=-1).T


@dataclass
class LatentMatch:
    """What the cosine matrix says about every latent of both SAEs.

    large_max_cos: ``[d_large]`` each L-latent's largest cosine to any S-latent; large_nearest: ``[d_large]`` that
    S-latent. small_max_cos / small_nearest: ``[d_small]`` the same from S's side. edges_large / edges_small /
    edges_cos: ``[n_edges]`` every pair with ``cos >= tau``.
    """

    tau: float
    large_max_cos: Tensor
    large_nearest: Tensor
    small_max_cos: Tensor
    small_nearest: Tensor
    edges_large: Tensor
    edges_small: Tensor
    edges_cos: Tensor

    @property
    def d_large(self) -> int:
        return self.large_max_cos.numel()

    @property
    def d_small(self) -> int:
        return self.small_max_cos.numel()

    @property
    def is_novel(self) -> Tensor:
        """``[d_large]`` bool: L-latents with no S-latent at cosine ``>= tau`` (they add a new direction)."""
        return self.large_max_cos < self.tau

    @property
    def novel_fraction(self) -> float:
        return float(self.is_novel.float().mean())


def match_latents(
    W_dec_small: Tensor,
    W_dec_large: Tensor,
    tau: float = DEFAULT_TAU,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    progress: bool = False,
) -> LatentMatch:
    """Match the latents of two decoders, ``W_dec_small [d_small, d_in]`` and ``W_dec_large [d_large, d_in]``.

    The cosine matrix is computed ``block_bytes`` at a time (on the decoders' device), so memory stays bounded
    whatever the widths; the result is identical to reading the full :func:`decoder_cosine_matrix`.
    """
    tau = check_tau(tau)
    if W_dec_small.shape[-1] != W_dec_large.shape[-1]:
        raise StitchingError(
            f"the decoders have different widths (d_in {W_dec_small.shape[-1]} vs {W_dec_large.shape[-1]}): "
            f"stitching needs two SAEs trained on the same activations"
        )
    small = F.normalize(W_dec_small.detach().float(), dim=-1)
    large = F.normalize(W_dec_large.detach().float(), dim=-1)
    d_small, d_large = small.shape[0], large.shape[0]
    rows = max(1, min(d_large, block_bytes // (4 * max(d_small, 1))))
    large_max = torch.empty(d_large, device=large.device)
    large_arg = torch.empty(d_large, dtype=torch.long, device=large.device)
    small_max = torch.full((d_small,), -2.0, device=large.device)
    small_arg = torch.zeros(d_small, dtype=torch.long, device=large.device)
    edges: list[tuple[Tensor, Tensor, Tensor]] = []
    starts = range(0, d_large, rows)
    for start in tqdm(starts, desc="decoder cosines", unit="block", disable=not progress, dynamic_ncols=True):
        block = large[start:start + rows] @ small.T  # [rows, d_small]
        large_max[start:start + rows], large_arg[start:start + rows] = block.max(dim=1)
        col_max, col_arg = block.max(dim=0)
        better = col_max > small_max
        small_max = torch.where(better, col_max, small_max)
        small_arg = torch.where(better, col_arg + start, small_arg)
        r, c = torch.nonzero(block >= tau, as_tuple=True)
        if r.numel():
            edges.append((r + start, c, block[r, c]))
        del block
    if edges:
        e_large, e_small, e_cos = (torch.cat(parts) for parts in zip(*edges))
    else:
        e_large = e_small = torch.zeros(0, dtype=torch.long, device=large.device)
        e_cos = torch.zeros(0, device=large.device)
    return LatentMatch(tau, large_max, large_arg, small_max, small_arg, e_large, e_small, e_cos)
