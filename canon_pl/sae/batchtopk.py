"""BatchTopK SAE (Bussmann, Leask, Nanda 2024): the top ``k * batch`` activations of the whole batch survive."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from canon_pl.distributed import global_kth_largest, is_distributed, world
from canon_pl.sae.base import SparseActivations, SparseAutoencoder
from canon_pl.sae.topk import TopKSettings

CANDIDATE_FRACTIONS = (0.9, 0.5)
"""Top-k candidates are the activations above these fractions of the running threshold, tried in turn (the
result is exact either way; a tighter bound leaves fewer candidates)."""


def batch_topk(pre: Tensor, k_total: int, lower_bounds: Sequence[float] = ()) -> SparseActivations:
    """The ``k_total`` largest positive entries of ``pre`` over the flattened batch.

    pre: ``[batch, d_sae]`` non-negative. Returns them in row-major order; values are differentiable.
    ``lower_bounds`` (decreasing; for example fractions of the running threshold) make it fast: with the first bound
    that at least ``k_total`` entries exceed, the exact top-k is taken among those candidates only; when none
    qualifies, over everything.
    """
    batch, d_sae = pre.shape
    k_total = min(k_total, pre.numel())
    flat = pre.reshape(-1)
    idx = None
    for bound in lower_bounds:
        if bound <= 0:
            break
        candidates = torch.nonzero(flat.detach() > bound, as_tuple=True)[0]
        if candidates.numel() >= k_total:
            _, chosen = flat.detach()[candidates].topk(k_total, sorted=False)
            idx = candidates[chosen]
            break
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


@dataclass(frozen=True)
class BatchTopKSettings(TopKSettings):
    """A BatchTopK SAE (the default): ``k`` latents per token on average over the batch, one inference threshold
    (TopK's settings; ``k`` counts on average over the batch)."""

    architecture = "batchtopk"

    def describe(self) -> str:
        return f"BatchTopK (k = {self.k})"


class BatchTopKSAE(SparseAutoencoder):
    """Training keeps the batch's top ``k * batch`` activations; inference uses one global threshold θ (the batch's
    top ``k * batch`` until θ has been set, as dictionary_learning does)."""

    architecture = "batchtopk"
    saelens_architecture = "jumprelu"  # SAELens saves BatchTopK SAEs as jumprelu, the threshold broadcast

    def inference_ready(self) -> bool:
        """The inference threshold is a running statistic of training: none before the first training batch."""
        return bool(self.threshold_initialized)

    def select(self, pre: Tensor, inference: bool) -> SparseActivations:
        if inference and bool(self.threshold_initialized):
            return threshold_select(pre, self.threshold)
        theta = float(self.threshold) if bool(self.threshold_initialized) else 0.0
        bounds = [f * theta for f in CANDIDATE_FRACTIONS]
        if self.training and is_distributed():
            return self._select_over_global_batch(pre, bounds)
        acts = batch_topk(pre, self.cfg.k * pre.shape[0], lower_bounds=bounds)
        if self.training and acts.values.numel() > 0:
            self.update_threshold(acts.values.detach().min())
        return acts

    def _select_over_global_batch(self, pre: Tensor, bounds: list[float]) -> SparseActivations:
        """Under DDP: this rank's share of the top ``k * global_batch`` activations of the *global* batch, so that
        training equals one process on the concatenated batch. pre: ``[batch, d_sae]`` (this rank's tokens).

        The global top-k's entries on this rank are among its local top ``k * global_batch``; the k-th largest of the
        union (:func:`global_kth_largest`) is the cut, and also the threshold update, identical on every rank.
        """
        k_total = self.cfg.k * pre.shape[0] * world()[1]  # equal batches on every rank (the DataModules' contract)
        local = batch_topk(pre, k_total, lower_bounds=bounds)
        has_values = local.values.numel() > 0
        cut = global_kth_largest(local.values.detach() if has_values else pre.new_zeros(1), k_total)
        keep = local.values.detach() >= cut
        if float(cut) > 0:
            self.update_threshold(cut)
        return SparseActivations(local.rows[keep], local.cols[keep], local.values[keep], local.batch_size)
