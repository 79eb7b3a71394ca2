"""BatchTopK SAE (Bussmann, Leask, Nanda 2024): the top ``k * batch`` activations of the whole batch survive."""

from __future__ import annotations

import torch
from torch import Tensor

from canon_pl.sae.base import SparseActivations, SparseAutoencoder

CANDIDATE_FRACTION = 0.5
"""Top-k candidates are the activations above this fraction of the running threshold (exact either way)."""


def batch_topk(pre: Tensor, k_total: int, lower_bound: float | None = None) -> SparseActivations:
    """The ``k_total`` largest positive entries of ``pre`` over the flattened batch.

    pre: ``[batch, d_sae]`` non-negative. Returns them in row-major order; values are differentiable.
    ``lower_bound`` (for example a fraction of the running threshold) makes it fast: when at least ``k_total``
    entries exceed it, the exact top-k is taken among those candidates only; otherwise over everything.
    """
    batch, d_sae = pre.shape
    k_total = min(k_total, pre.numel())
    flat = pre.reshape(-1)
    idx = None
    if lower_bound is not None and lower_bound > 0:
        candidates = torch.nonzero(flat.detach() > lower_bound, as_tuple=True)[0]
        if candidates.numel() >= k_total:
            _, chosen = flat.detach()[candidates].topk(k_total, sorted=False)
            idx = candidates[chosen]
    if idx is None:
        _, idx = flat.detach().topk(k_total, sorted=False)
    idx, _ = idx.sort()
    values = flat[idx]
    keep = values > 0
    idx, values = idx[keep], values[keep]
    return SparseActivations(rows=idx // d_sae, cols=idx % d_sae, values=values, batch_size=batch)


def threshold_select(pre: Tensor, threshold: Tensor) -> SparseActivations:
    """Entries of ``pre`` ``[batch, d_sae]`` above ``threshold`` (a scalar or ``[d_sae]``)."""
    rows, cols = torch.nonzero(pre > threshold, as_tuple=True)
    return SparseActivations(rows=rows, cols=cols, values=pre[rows, cols], batch_size=pre.shape[0])


class BatchTopKSAE(SparseAutoencoder):
    """Training keeps the batch's top ``k * batch`` activations; inference uses one global threshold θ."""

    architecture = "batchtopk"

    def select(self, pre: Tensor, inference: bool) -> SparseActivations:
        if inference:
            return threshold_select(pre, self.threshold)
        hint = CANDIDATE_FRACTION * float(self.threshold) if bool(self.threshold_initialized) else None
        acts = batch_topk(pre, self.cfg.k * pre.shape[0], lower_bound=hint)
        if self.training and acts.values.numel() > 0:
            self.update_threshold(acts.values.detach().min())
        return acts
