"""Co-firing correspondence between two SAEs run on the same tokens: for each latent of one, the latent of the other
that fires on the most similar set of tokens (Jaccard index of their firing sets).

Decoder cosine says two latents point the same way; co-firing says they respond to the same tokens. A reconstruction
group whose children really split their parent's support shows each child co-firing with the parent; a child that
only shares its direction does not. Pure torch over sparse codes: each batch counts the pairs of latents active on the
same token, one from each SAE (``A^T B`` for the firing patterns, enumerated by joining the codes on their token), so
the cost grows with ``Σ_t k_a(t) k_b(t)``, and the ``[d_a, d_b]`` count matrix is the memory bound (:data:`MAX_PAIRS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

MAX_PAIRS = 1 << 27
"""The largest ``d_a * d_b`` whose co-firing counts are kept (float32: 512 MB); wider pairs are left out."""
PAIRS_PER_SLICE = 1 << 23
"""Co-active pairs enumerated at once (a few hundred MB of indices at most)."""


@dataclass
class CoFiring:
    """Counts, over every token both SAEs saw, of how often latent ``i`` of A and latent ``j`` of B fire together.

    counts: ``[d_a, d_b]``; fires_a: ``[d_a]``; fires_b: ``[d_b]``."""

    d_a: int
    d_b: int
    device: torch.device | str = "cpu"
    counts: Tensor = field(init=False)
    fires_a: Tensor = field(init=False)
    fires_b: Tensor = field(init=False)

    def __post_init__(self) -> None:
        if self.d_a * self.d_b > MAX_PAIRS:
            raise ValueError(f"co-firing of {self.d_a} x {self.d_b} latents needs {self.d_a * self.d_b:,} counts "
                             f"(at most {MAX_PAIRS:,})")
        self.counts = torch.zeros(self.d_a, self.d_b, device=self.device)
        self.fires_a = torch.zeros(self.d_a, device=self.device)
        self.fires_b = torch.zeros(self.d_b, device=self.device)

    @torch.no_grad()
    def update(self, n_tokens: int, codes_a: tuple[Tensor, Tensor], codes_b: tuple[Tensor, Tensor]) -> None:
        """``codes_*``: ``(rows [m], cols [m])`` of the non-zero activations of each SAE on the same ``n_tokens``
        tokens (row = token, col = latent). Every pair of latents active on one token, one from each SAE, adds one
        count: the pairs are enumerated by joining the two codes on their token (``Σ_t k_a(t) k_b(t)`` of them)."""
        rows_a, cols_a = codes_a
        rows_b, cols_b = codes_b
        order = torch.argsort(rows_b, stable=True)  # the join needs B's entries grouped by token
        rows_b, cols_b = rows_b[order], cols_b[order]
        start = torch.searchsorted(rows_b, rows_a)
        per_entry = torch.searchsorted(rows_b, rows_a, right=True) - start  # B's latents active on A's entry's token
        ends = torch.cumsum(per_entry, 0)
        lo = 0
        while lo < rows_a.numel():  # A's entries in slices of at most PAIRS_PER_SLICE pairs (bounded memory)
            base = int(ends[lo - 1]) if lo else 0
            hi = max(int(torch.searchsorted(ends, base + PAIRS_PER_SLICE, right=True)), lo + 1)
            counts = per_entry[lo:hi]
            entry = torch.repeat_interleave(torch.arange(lo, hi, device=rows_a.device), counts)
            first = ends[lo:hi] - counts
            partner = start[entry] + torch.arange(entry.numel(), device=rows_a.device) + base - first[entry - lo]
            flat = cols_a[entry] * self.d_b + cols_b[partner]
            self.counts.view(-1).index_add_(0, flat, torch.ones_like(flat, dtype=self.counts.dtype))
            lo = hi
        self.fires_a += torch.bincount(cols_a, minlength=self.d_a).float()
        self.fires_b += torch.bincount(cols_b, minlength=self.d_b).float()

    def best_partners(self) -> tuple[Tensor, Tensor]:
        """``(partner [d_a], jaccard [d_a])``: for each latent of A, the latent of B with the highest Jaccard index
        ``|both| / |either|`` of their firing sets, and that index (0, partner -1, for a latent that never fired)."""
        union = self.fires_a[:, None] + self.fires_b[None, :] - self.counts
        jaccard = self.counts / union.clamp_min(1.0)
        best, partner = jaccard.max(dim=1)
        partner = torch.where(best > 0, partner, torch.full_like(partner, -1))
        return partner, best


__all__ = ["MAX_PAIRS", "PAIRS_PER_SLICE", "CoFiring"]
