"""Streaming per-latent top-k with payloads: the top activating examples of every latent without ever holding all
activations (memory ``n_latents * k * payload``)."""

from __future__ import annotations

import torch
from torch import Tensor


class StreamingTopK:
    """For each of ``n`` latents, the ``k`` largest scores seen so far, with an integer id and a float payload each.

    scores: ``[n, k]`` (``-inf`` where empty), ids: ``[n, k]`` int64 (-1 where empty), payload: ``[n, k, *shape]``.
    """

    def __init__(self, n: int, k: int, payload_shape: tuple[int, ...] = (), device: str | torch.device = "cpu"):
        self.k = k
        self.scores = torch.full((n, k), float("-inf"), device=device)
        self.ids = torch.full((n, k), -1, dtype=torch.long, device=device)
        self.payload = torch.zeros((n, k, *payload_shape), device=device)

    def update(self, scores: Tensor, ids: Tensor, payload: Tensor | None = None) -> None:
        """Merge candidates: scores ``[n, m]``, ids ``[n, m]``, payload ``[n, m, *shape]`` (``-inf`` scores are
        ignored). Ties keep the earlier entry."""
        all_scores = torch.cat([self.scores, scores.to(self.scores)], dim=1)
        top, where = all_scores.topk(self.k, dim=1, sorted=True)
        self.ids = torch.cat([self.ids, ids.to(self.ids)], dim=1).gather(1, where)
        if payload is not None:
            stacked = torch.cat([self.payload, payload.to(self.payload)], dim=1)
            index = where.view(*where.shape, *([1] * (stacked.dim() - 2))).expand(-1, -1, *stacked.shape[2:])
            self.payload = stacked.gather(1, index)
        self.scores = top
