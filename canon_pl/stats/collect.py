"""One pass of text through the LM and every SAE of a run, collecting per-latent statistics (pure torch over
activations; the LM side is a callable that yields ``(tokens, activations, mask)`` per batch of contexts)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from canon_pl.sae import SparseAutoencoder
from canon_pl.stats.cofiring import CoFiring
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
    last_codes: tuple[Tensor, Tensor] | None = field(init=False, default=None)
    """``(rows, cols)`` of the last batch's firings (what co-firing counts read)."""

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
        ``first_context`` numbers the contexts so ids are ``context * seq + position``.

        Works on the sparse codes only (the dense pre-activations are the one ``[tokens, d_sae]`` pass), so the cost
        beyond the encoder matmul grows with the number of firings, not with ``tokens * d_sae``.
        """
        n_ctx, seq, d_in = activations.shape
        rows, cols, values = sparse_codes_at(self.sae, activations.reshape(-1, d_in).float(), mask.reshape(-1))
        self.last_codes = (rows, cols)
        n = self.sae.d_sae
        self.n_tokens += int(mask.sum())
        self.fire_count += torch.bincount(cols, minlength=n)
        bins = torch.bucketize(values.log10(), HIST_EDGES.to(values.device))
        self.histogram.index_put_((cols, bins), torch.ones_like(bins), accumulate=True)
        if values.numel() == 0:
            return
        first_id = first_context * seq
        # top activations, with a window of the same latent's activations around each
        top_idx = _per_latent_top(cols, values, self.n_top, n)  # [n, n_top] indices into the codes (-1: none)
        valid = top_idx >= 0
        entries = top_idx[valid]  # windows only where there is an example
        offsets = torch.arange(-self.window, self.window + 1, device=values.device)
        pos = (rows[entries] % seq).unsqueeze(-1) + offsets  # [m, W]
        keys = rows * n + cols  # sorted: the codes are row-major
        query = (rows[entries].unsqueeze(-1) + offsets).clamp(0, n_ctx * seq - 1) * n + cols[entries].unsqueeze(-1)
        found = torch.searchsorted(keys, query).clamp_max(keys.numel() - 1)
        hit = (keys[found] == query) & (pos >= 0) & (pos < seq)
        windows = values.new_zeros(n, self.n_top, offsets.numel())
        windows[valid] = torch.where(hit, values[found], torch.zeros_like(values[found]))
        safe = top_idx.clamp_min(0)
        scores = torch.where(valid, values[safe], torch.full_like(values[safe], float("-inf")))
        self.top.update(scores, torch.where(valid, rows[safe] + first_id, -1), windows)
        # a uniform sample of firing occurrences: the largest random keys per latent
        random_keys = torch.rand(values.numel(), generator=self._generator).to(values.device)
        pick = _per_latent_top(cols, random_keys, self.n_sample, n)
        ok = pick >= 0
        safe = pick.clamp_min(0)
        self.sample.update(torch.where(ok, random_keys[safe], torch.full_like(random_keys[safe], float("-inf"))),
                           torch.where(ok, rows[safe] + first_id, -1), values[safe].unsqueeze(-1))



def sparse_codes_at(sae: SparseAutoencoder, x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(rows, cols, values)``: the non-zero inference activations of ``sae`` on ``x [tokens, d_in]`` at tokens where
    ``keep [tokens]`` is true, row-major."""
    selected = sae.select(sae.pre_activations(x), inference=True)
    if isinstance(selected, Tensor):
        rows, cols = torch.nonzero(selected, as_tuple=True)
        values = selected[rows, cols]
    else:
        rows, cols, values = selected.rows, selected.cols, selected.values
    kept = keep.to(rows.device)[rows]
    return rows[kept], cols[kept], values[kept]


def _per_latent_top(cols: Tensor, scores: Tensor, k: int, n: int) -> Tensor:
    """``[n, k]`` indices of the ``k`` largest ``scores`` of each latent among entries ``cols [m]`` (-1 padded)."""
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[torch.argsort(cols[order], stable=True)]  # by latent, then by score
    sorted_cols = cols[order]
    counts = torch.bincount(sorted_cols, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=cols.device) - starts[sorted_cols]
    keep = rank < k
    out = torch.full((n, k), -1, dtype=torch.long, device=cols.device)
    out[sorted_cols[keep], rank[keep]] = order[keep]
    return out


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
                       cofiring: dict[tuple[str, str], SparseAutoencoder | None] | None = None,
                       **options) -> tuple[dict[str, LatentStatsCollector], list[Tensor], dict[tuple[str, str], CoFiring]]:
    """Run every SAE over the same batches ``(tokens [n_ctx, seq], activations [n_ctx, seq, d], mask)``; returns
    the collectors, the token contexts (ids index into their concatenation, flattened) and the co-firing counts of
    each pair ``(member, other)`` of ``cofiring``: ``other`` is another member (value ``None``) or an SAE encoded only
    for this (a seed control, the value)."""
    collectors = {name: LatentStatsCollector(sae, **options) for name, sae in saes.items()}
    pairs = cofiring or {}
    counts = {(a, b): CoFiring(saes[a].d_sae, (other if other is not None else saes[b]).d_sae, saes[a].W_dec.device)
              for (a, b), other in pairs.items()}
    contexts: list[Tensor] = []
    first = 0
    for tokens, activations, mask in batches:
        for collector in collectors.values():
            collector.update(activations, mask, first)
        n_ctx, seq, d_in = activations.shape
        for (a, b), other in pairs.items():
            if other is None:
                codes_b = collectors[b].last_codes
            else:
                codes_b = sparse_codes_at(other, activations.reshape(-1, d_in).float(), mask.reshape(-1))[:2]
            counts[(a, b)].update(n_ctx * seq, collectors[a].last_codes, codes_b)
        contexts.append(tokens.cpu())
        first += tokens.shape[0]
    return collectors, contexts, counts
