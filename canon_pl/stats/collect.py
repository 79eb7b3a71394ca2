"""One pass of text through the LM and every SAE of a run, collecting per-latent statistics (pure torch over
activations; the LM side is a callable that yields ``(tokens, activations, mask)`` per batch of contexts)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from canon_pl.sae import SparseAutoencoder
from canon_pl.stats.topk import StreamingTopK

HIST_EDGES = torch.linspace(-2.0, 3.0, 41)
"""log10-activation histogram bin edges shared by every latent (activations of 0.01 to 1000)."""


@dataclass
class LatentStatsCollector:
    """Accumulates one SAE's statistics over batches of contexts.

    top: the ``n_top`` largest activations per latent with a ``2 * window + 1`` window of that latent's activations
    around each; sample: ``n_sample`` firing occurrences drawn uniformly (random keys), for quantile examples.
    """

    sae: SparseAutoencoder
    n_top: int = 10
    n_sample: int = 20
    window: int = 8
    seed: int = 0
    n_tokens: int = 0
    fire_count: Tensor = field(init=False)
    histogram: Tensor = field(init=False)
    top: StreamingTopK = field(init=False)
    sample: StreamingTopK = field(init=False)

    def __post_init__(self) -> None:
        n, device = self.sae.d_sae, self.sae.W_dec.device
        self.fire_count = torch.zeros(n, dtype=torch.long, device=device)
        self.histogram = torch.zeros(n, len(HIST_EDGES) + 1, dtype=torch.long, device=device)
        self.top = StreamingTopK(n, self.n_top, (2 * self.window + 1,), device)
        self.sample = StreamingTopK(n, self.n_sample, (1,), device)
        self._generator = torch.Generator(device="cpu").manual_seed(self.seed)

    @torch.no_grad()
    def update(self, activations: Tensor, mask: Tensor, first_context: int) -> None:
        """activations: ``[n_ctx, seq, d_in]`` raw, mask: ``[n_ctx, seq]`` tokens to count (BOS and outliers out);
        ``first_context`` numbers the contexts so ids are ``context * seq + position``."""
        n_ctx, seq, d_in = activations.shape
        acts = self.sae.encode(activations.reshape(-1, d_in).float(), inference=True)
        acts = acts * mask.reshape(-1, 1).to(acts)  # [n_ctx * seq, d_sae]
        self.n_tokens += int(mask.sum())
        fired = acts > 0
        self.fire_count += fired.sum(0)
        rows, cols = torch.nonzero(fired, as_tuple=True)
        values = acts[rows, cols]
        bins = torch.bucketize(values.log10(), HIST_EDGES.to(values.device))
        self.histogram.index_put_((cols, bins), torch.ones_like(bins), accumulate=True)
        ids = first_context * seq + torch.arange(n_ctx * seq, device=acts.device)
        # top activations with a window of the same latent's activations around each
        k = min(self.n_top, acts.shape[0])
        top_values, top_rows = acts.topk(k, dim=0)  # [k, d_sae]
        per_ctx = acts.view(n_ctx, seq, -1)
        offsets = torch.arange(-self.window, self.window + 1, device=acts.device)
        ctx, pos = top_rows // seq, top_rows % seq  # [k, d_sae]
        at = pos.unsqueeze(-1) + offsets  # [k, d_sae, W]
        inside = (at >= 0) & (at < seq)
        latent = torch.arange(acts.shape[1], device=acts.device).view(1, -1, 1).expand_as(at)
        windows = per_ctx[ctx.unsqueeze(-1).expand_as(at), at.clamp(0, seq - 1), latent] * inside
        scores = torch.where(top_values > 0, top_values, torch.full_like(top_values, float("-inf")))
        self.top.update(scores.T, ids[top_rows].T, windows.transpose(0, 1))
        # a uniform sample of firing occurrences: the largest random keys
        if values.numel():
            keys = torch.rand(values.numel(), generator=self._generator).to(values.device)
            dense_keys = torch.full_like(acts, float("-inf"))
            dense_keys[rows, cols] = keys
            m = min(self.n_sample, acts.shape[0])
            chosen_keys, chosen_rows = dense_keys.topk(m, dim=0)
            self.sample.update(chosen_keys.T, ids[chosen_rows].T, acts.gather(0, chosen_rows).T.unsqueeze(-1))


def unembedding_directions(W_dec: Tensor, unembed: Tensor, final_norm_weight: Tensor | None = None,
                           n: int = 10) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top promoted and suppressed tokens of each direction ``W_dec [d_sae, d_in]`` through ``unembed [vocab, d_in]``,
    with the final RMSNorm's weight applied as the model does (``logits = W_U (g ⊙ x / rms(x))``; the rms only
    rescales a direction). Returns (promoted ids, values, suppressed ids, values), each ``[d_sae, n]``."""
    directions = F.normalize(W_dec.float(), dim=-1)
    if final_norm_weight is not None:
        directions = directions * final_norm_weight.float()
    promoted_v, promoted, suppressed_v, suppressed = [], [], [], []
    for chunk in directions.split(1024):
        logits = chunk @ unembed.float().T
        v, i = logits.topk(n, dim=1)
        promoted_v.append(v), promoted.append(i)
        v, i = (-logits).topk(n, dim=1)
        suppressed_v.append(-v), suppressed.append(i)
    return torch.cat(promoted), torch.cat(promoted_v), torch.cat(suppressed), torch.cat(suppressed_v)


def collect_statistics(saes: dict[str, SparseAutoencoder], batches: Iterable[tuple[Tensor, Tensor, Tensor]],
                       **options) -> tuple[dict[str, LatentStatsCollector], list[Tensor]]:
    """Run every SAE over the same batches ``(tokens [n_ctx, seq], activations [n_ctx, seq, d], mask)``; returns
    the collectors and the token contexts (ids index into their concatenation, flattened)."""
    collectors = {name: LatentStatsCollector(sae, **options) for name, sae in saes.items()}
    contexts: list[Tensor] = []
    first = 0
    for tokens, activations, mask in batches:
        for collector in collectors.values():
            collector.update(activations, mask, first)
        contexts.append(tokens.cpu())
        first += tokens.shape[0]
    return collectors, contexts
