"""Which captured tokens an SAE trains on: BOS and abnormally high-norm tokens are excluded by default.

In SmolLM2's residual stream a few attention-sink tokens have norms ~200x the median; they dominate the variance and
make FVU swing from batch to batch (docs/design.md section 3). dictionary_learning and sparsify drop them too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class TokenSelection:
    """kept: ``[n_kept, d]`` activations; mask: ``[batch, seq]`` True where kept; counts of what was excluded."""

    kept: Tensor
    mask: Tensor
    n_bos: int
    n_outliers: int

    @property
    def excluded_fraction(self) -> float:
        total = self.mask.numel()
        return (total - int(self.mask.sum())) / max(total, 1)


def select_training_tokens(acts: Tensor, exclude_bos: bool = True, outlier_factor: float | None = 10.0) -> TokenSelection:
    """Drop position 0 (BOS) and tokens whose norm exceeds ``outlier_factor`` × the median token norm.

    acts: ``[batch, seq, d]``. ``outlier_factor=None`` keeps every non-BOS token.
    """
    batch, seq, _ = acts.shape
    mask = torch.ones(batch, seq, dtype=torch.bool, device=acts.device)
    if exclude_bos:
        mask[:, 0] = False
    n_outliers = 0
    if outlier_factor is not None:
        norms = acts.float().norm(dim=-1)
        median = norms[mask].median() if mask.any() else norms.median()
        outliers = (norms > outlier_factor * median) & mask
        n_outliers = int(outliers.sum())
        mask &= ~outliers
    return TokenSelection(acts[mask], mask, batch if exclude_bos else 0, n_outliers)
