"""The stitching path at every granularity of grouping: does it become monotone at fine groups (the paper's claim,
width adds structure S lacks) or only when the groups are as coarse as between two seeds of one width?

The paper groups S- and L-latents by decoder cosine ``>= 0.7``. A latent that S holds as the *sum* of a few parts (a
feature family) has each part at cosine ``1/sqrt(parts)`` to it (0.577 for three), below any usual threshold, so
every part is inserted alone and double counts its parent until the parent is removed. Grouping by **reconstruction
overlap** on held-out tokens finds such families: the overlap of S-latent i and L-latent j is the cosine of their
contributions to the reconstruction over all tokens,

    overlap_ij = <a_i W_i, b_j V_j>_(tokens x d_in) / (|a_i W_i| |b_j V_j|) = cos(W_i, V_j) * <a_i, b_j> / (|a_i| |b_j|)

(``a_i [N]``, ``b_j [N]`` the latents' activations, ``W_i``, ``V_j`` their decoder rows): high when the two latents
write the same direction on the same tokens. :func:`granularity_curve` walks the path (:func:`stitching_path`) once
per grouping, from the finest to the coarsest: decoder cosine at 0.7 and 0.3, each latent's best
reconstruction-overlap partner above falling thresholds, then every overlapping pair above falling thresholds (the
most-overlapping groups merged first) until the path stays within :data:`MONOTONE_TOLERANCE` of its worse endpoint.
Each point records the path's peak over its worse endpoint, the largest group's share of L-latents and the
L-latents per swap. Run on a cross-width pair and on its cross-seed control (two seeds of L's width), the curves say
whether width needs finer groups than seed noise does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from canon_pl.sae import SparseAutoencoder
from canon_pl.stitching.groups import LatentGroups, groups_from_edges
from canon_pl.metrics.matching import StitchingError
from canon_pl.stitching.path import SparseCodes, reconstruction, sparse_codes, stitching_path

MONOTONE_TOLERANCE = 0.05
"""A path whose peak stays within 5 % of its worse endpoint counts as monotone here (float noise and tiny bumps)."""

COSINE_THRESHOLDS = (0.7, 0.3)
BEST_PARTNER_THRESHOLDS = (0.5, 0.3, 0.1)
ALL_PAIRS_THRESHOLDS = (0.1, 0.05, 0.02, 0.01)
GRANULARITY_TOKENS = 4096
"""Held-out tokens a curve walks its paths on (the first of the analysis's): a path costs time in proportion to its
non-zeros times d_in (about 10 s for 576 -> 1152 on 8,192 tokens on 2 cores), and a curve walks up to nine, for the
pair and for its control."""
CURVE_REMEASURED = 4
"""Re-measurements per step of a curve's lazy-greedy paths (:func:`stitching_path`'s ``max_remeasured``; the study's
own path takes 32): a curve walks up to nine paths for the pair and nine for its control, and on SAEs whose latents
share many tokens most of a path's time went to re-measuring; pair and control are walked alike."""
MAX_DENSE_PAIRS = 1 << 27
"""The overlap and cosine matrices are dense ``[d_small, d_large]``: 128M entries (512 MB) at most."""


@torch.no_grad()
def reconstruction_overlap(W_dec_small: Tensor, W_dec_large: Tensor, small_codes: SparseCodes,
                           large_codes: SparseCodes, chunk_tokens: int = 4096) -> Tensor:
    """``[d_small, d_large]``: the reconstruction overlap of every S-latent with every L-latent (module docstring),
    0 for a latent that never fires. Decoders ``[d, d_in]``; codes on the same ``N`` tokens."""
    d_small, d_large = small_codes.d_sae, large_codes.d_sae
    if d_small * d_large > MAX_DENSE_PAIRS:
        raise StitchingError(f"the overlap matrix of {d_small} x {d_large} latents is too large to hold "
                             f"({d_small * d_large:,} entries, at most {MAX_DENSE_PAIRS:,}); stitch narrower pairs")
    n = small_codes.n_tokens
    device = W_dec_small.device
    coactivation = torch.zeros(d_small, d_large, device=device)
    for start in range(0, n, chunk_tokens):
        stop = min(start + chunk_tokens, n)
        dense = []
        for codes in (small_codes, large_codes):
            keep = (codes.rows >= start) & (codes.rows < stop)
            block = torch.zeros(stop - start, codes.d_sae, device=device)
            block[codes.rows[keep] - start, codes.cols[keep]] = codes.values[keep].float()
            dense.append(block)
        coactivation += dense[0].T @ dense[1]
    norms = [torch.zeros(c.d_sae, device=device).index_add_(0, c.cols, c.values.float().square()).sqrt()
             for c in (small_codes, large_codes)]
    cosine = F.normalize(W_dec_small.float(), dim=-1) @ F.normalize(W_dec_large.float(), dim=-1).T
    scale = (norms[0][:, None] * norms[1][None, :]).clamp_min(1e-12)
    return torch.where(scale > 1e-12, cosine * coactivation / scale, torch.zeros_like(cosine))


def best_partner_edges(score: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(S indices, L indices) of each latent's best partner on the other side by ``score [d_small, d_large]``, kept
    when at least ``threshold`` (both directions, deduplicated)."""
    best_for_large = score.argmax(dim=0)  # [d_large]
    best_for_small = score.argmax(dim=1)  # [d_small]
    large_idx = torch.arange(score.shape[1], device=score.device)
    small_idx = torch.arange(score.shape[0], device=score.device)
    s = torch.cat([best_for_large, small_idx])
    l = torch.cat([large_idx, best_for_small])
    keep = score[s, l] >= threshold
    pairs = torch.unique(torch.stack([s[keep], l[keep]]), dim=1)
    return pairs[0], pairs[1]


def threshold_edges(score: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(S indices, L indices) of every pair with ``score >= threshold``."""
    s, l = torch.nonzero(score >= threshold, as_tuple=True)
    return s, l


@dataclass
class GranularityPoint:
    """One grouping and the path it gives."""

    grouping: str
    threshold: float
    n_groups: int
    kinds: dict[str, int]
    largest_group_share: float
    latents_per_swap: float | None
    path_excess: float
    monotone_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return {"grouping": self.grouping, "threshold": self.threshold, "n_groups": self.n_groups,
                "kinds": self.kinds, "largest_group_share": self.largest_group_share,
                "latents_per_swap": self.latents_per_swap, "path_excess": self.path_excess,
                "path_peak_over_worse_endpoint": 1.0 + self.path_excess,
                "monotone_fraction": self.monotone_fraction}


def _point(grouping: str, threshold: float, groups: LatentGroups, small: SparseAutoencoder, large: SparseAutoencoder,
           x: Tensor, small_codes: SparseCodes, large_codes: SparseCodes, residual_small: Tensor) -> GranularityPoint:
    path = stitching_path(small, large, x, groups, small_codes, large_codes, residual_small=residual_small,
                          max_remeasured=CURVE_REMEASURED)
    kinds = groups.kind_counts()
    swaps = (groups.n_small > 0) & (groups.n_large > 0)
    return GranularityPoint(
        grouping=grouping, threshold=float(threshold), n_groups=groups.n_groups, kinds=kinds,
        largest_group_share=float(groups.n_large.max()) / max(large.d_sae, 1) if groups.n_groups else 0.0,
        latents_per_swap=float(groups.n_large[swaps].float().mean()) if bool(swaps.any()) else None,
        path_excess=path.excess_over_endpoints(), monotone_fraction=path.monotone_fraction())


@torch.no_grad()
def granularity_curve(small: SparseAutoencoder, large: SparseAutoencoder, x: Tensor,
                      tolerance: float = MONOTONE_TOLERANCE) -> dict[str, Any]:
    """The path's peak at every grouping, finest first (module docstring), for SAEs in their encoder space and
    activations ``x [N, d_in]``. Returns ``points`` (each :meth:`GranularityPoint.to_dict`), ``monotone_at`` (the
    first point within ``tolerance``, or ``None``), ``monotone_largest_group_share`` (its largest group's share of
    L-latents: the granularity the path needs) and ``n_tokens``."""
    small_codes, large_codes = sparse_codes(small, x), sparse_codes(large, x)
    residual_small = x - reconstruction(small, x)
    d_small, d_large = small.d_sae, large.d_sae
    if d_small * d_large > MAX_DENSE_PAIRS:
        raise StitchingError(f"the granularity curve holds {d_small} x {d_large} matrices; at most "
                             f"{MAX_DENSE_PAIRS:,} entries")
    cosine = F.normalize(small.W_dec.detach().float(), dim=-1) @ F.normalize(large.W_dec.detach().float(), dim=-1).T
    overlap = reconstruction_overlap(small.W_dec.detach(), large.W_dec.detach(), small_codes, large_codes)
    plans: list[tuple[str, float, tuple[Tensor, Tensor]]] = []
    plans += [("decoder cosine", t, threshold_edges(cosine, t)) for t in COSINE_THRESHOLDS]
    plans += [("overlap, best partner", t, best_partner_edges(overlap, t)) for t in BEST_PARTNER_THRESHOLDS]
    plans += [("overlap, every pair", t, threshold_edges(overlap, t)) for t in ALL_PAIRS_THRESHOLDS]
    points: list[GranularityPoint] = []
    monotone_at = None
    for grouping, threshold, (s, l) in plans:
        groups = groups_from_edges(d_small, d_large, s, l)
        point = _point(grouping, threshold, groups, small, large, x, small_codes, large_codes, residual_small)
        points.append(point)
        if monotone_at is None and point.path_excess <= tolerance:
            monotone_at = len(points) - 1
        if grouping == "overlap, every pair" and monotone_at is not None:
            break  # merged far enough
    return {"tolerance": tolerance, "n_tokens": int(x.shape[0]), "max_remeasured": CURVE_REMEASURED,
            "points": [p.to_dict() for p in points],
            "monotone_at": monotone_at,
            "monotone_largest_group_share": None if monotone_at is None else points[monotone_at].largest_group_share}


def needed_share(curve: dict[str, Any] | None) -> float | None:
    """The largest group's share of L-latents a curve needed for a monotone path: the first point within its
    tolerance; for a curve that never gets there but comes within twice the tolerance (a path stalled at 1.07x its
    worse endpoint is no evidence that it needs coarser groups than one at 1.05x), the share of the first point
    that does; ``None`` when it stays further above."""
    if not curve:
        return None
    if curve.get("monotone_largest_group_share") is not None:
        return float(curve["monotone_largest_group_share"])
    points = curve.get("points") or []
    if not points:
        return None
    tolerance = float(curve.get("tolerance", MONOTONE_TOLERANCE))
    near = [q for q in points if q["path_excess"] <= 2 * tolerance]  # finest first, as the curve walked them
    return float(near[0]["largest_group_share"]) if near else None


__all__ = ["CURVE_REMEASURED", "GRANULARITY_TOKENS", "MONOTONE_TOLERANCE", "GranularityPoint", "best_partner_edges", "granularity_curve", "needed_share",
           "reconstruction_overlap", "threshold_edges"]
