"""The stitching path from S to L (docs/design.md 1.2, step 5) and the definitional check of the cosine proxy.

Everything is computed from the two SAEs' sparse codes on a fixed set of ``N`` tokens and the residual
``r = x - x_hat`` of the current stitched SAE. A step applies one group (insert its L-latents, remove its S-latents):
the reconstruction changes by ``delta = sum_L a_j W_dec^L[j] - sum_S a_i W_dec^S[i]`` on the tokens where those
latents fire, so a step costs time in proportion to its non-zeros, not to ``N * d_sae``. Inserted L-latents keep
L's exact activations (the bias folding of :class:`StitchedSAE`); the last step switches the decoder bias from
S's to L's, so the path ends exactly at L.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from canon_pl.sae import SparseAutoencoder
from canon_pl.sae.codes import SparseCodes, reconstruction, sparse_codes  # noqa: F401 - read here too
from canon_pl.stitching.groups import LatentGroups

STEP_KINDS = ("start", "novel", "swap", "removal", "decoder_bias")
ENTRY_CHUNK = 1 << 16
"""Non-zeros handled at once when scoring all groups ([ENTRY_CHUNK, d_in] floats of scratch memory)."""
PAIR_CHUNK = 1 << 20
"""Pairs of non-zeros (of one group on one token) summed at once for a group's squared change."""
GRAM_MAX_ENTRIES = 1 << 26
"""The decoders' Gram matrix ``[d_small + d_large]^2`` is held when it has at most this many entries (256 MB);
wider pairs take each dot product from the two decoder rows."""
DENSE_PER_NONZERO = 128
"""Scoring every group against the residual multiplies it by the whole decoder (``[N, d_in] @ [d_in, d_small +
d_large]``) when the two widths together are at most this many times the non-zeros per token; a matrix product
runs ~300x more multiply-adds per second than gathering one decoder row per non-zero."""
DENSE_MAX_ENTRIES = 1 << 26
"""Entries of ``residual @ W.T`` held at once (256 MB); more tokens are taken in chunks."""


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the enclosed torch ops on one intra-op thread, restoring the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def entry_dots(residual: Tensor, rows: Tensor, latents: Tensor, W: Tensor) -> Tensor:
    """``[nnz]``: ``residual[rows[e]] . W[latents[e]]`` for every non-zero ``e`` (``residual [N, d_in]``,
    ``W [n_latents, d_in]``). When the decoder is narrow for the non-zeros per token (:data:`DENSE_PER_NONZERO`) one
    matrix product ``residual @ W.T`` (in token chunks) is far faster than gathering a decoder row per non-zero
    (6-11x at 576 -> 1152 and 1152 -> 2304 on 8,192 tokens; ``bench_path.py``, ``bench_stitch_floor.py``)."""
    n_tokens, nnz, n_rows = residual.shape[0], rows.numel(), W.shape[0]
    if n_rows > DENSE_PER_NONZERO * max(nnz / max(n_tokens, 1), 1.0):
        return torch.cat([torch.einsum("ij,ij->i", residual[rows[lo:lo + ENTRY_CHUNK]], W[latents[lo:lo + ENTRY_CHUNK]])
                          for lo in range(0, nnz, ENTRY_CHUNK)] or [residual.new_zeros(0)])
    step = max(1, DENSE_MAX_ENTRIES // n_rows)
    if step >= n_tokens:
        return (residual @ W.T)[rows, latents]
    dots = residual.new_empty(nnz)
    for start in range(0, n_tokens, step):
        inside = (rows >= start) & (rows < start + step)
        dots[inside] = (residual[start:start + step] @ W.T)[rows[inside] - start, latents[inside]]
    return dots


@torch.no_grad()
def single_insertion_changes(large_codes: SparseCodes, W_dec_large: Tensor, residual_small: Tensor) -> Tensor:
    """``[nnz]``: each non-zero's change of its token's squared error when its L-latent alone is added to S,
    ``a^2 |W_j|^2 - 2 a r·W_j`` (``a`` the activation, ``r`` the token's row of ``residual_small [N, d_in]`` =
    ``x - S(x)``), in the order of ``large_codes``' entries. Summed per latent it is the single-insertion MSE change
    (:func:`single_insertion_delta_mse`); summed per latent within a chunk of tokens, that chunk's
    (:func:`canon_pl.stitching.classify.definition_chunk_spread`): one gather of ``r·W`` serves both."""
    a = large_codes.values.float()
    squared_norms = W_dec_large.square().sum(-1)  # [d_large]
    dots = entry_dots(residual_small, large_codes.rows, large_codes.cols, W_dec_large)
    return a.square() * squared_norms[large_codes.cols] - 2.0 * a * dots


def delta_mse_from_changes(large_codes: SparseCodes, changes: Tensor, n_tokens: int, d_in: int,
                           keep: Tensor | None = None) -> Tensor:
    """``[d_large]``: the single-insertion MSE change of each L-latent from the per-non-zero ``changes [nnz]``
    (:func:`single_insertion_changes`), over ``n_tokens`` tokens of ``d_in`` dimensions; ``keep [nnz]`` (bool)
    counts only those non-zeros. Latents with no (kept) non-zero get 0."""
    cols = large_codes.cols if keep is None else large_codes.cols[keep]
    values = changes if keep is None else changes[keep]
    delta = torch.zeros(large_codes.d_sae, device=changes.device)
    for s in range(0, values.numel(), ENTRY_CHUNK):
        delta.index_add_(0, cols[s:s + ENTRY_CHUNK], values[s:s + ENTRY_CHUNK])
    return delta / (n_tokens * d_in)


@torch.no_grad()
def single_insertion_delta_mse(large_codes: SparseCodes, W_dec_large: Tensor, residual_small: Tensor) -> Tensor:
    """``[d_large]``: the change in MSE when each L-latent alone is added to S (with its exact L activation).

    residual_small: ``[N, d_in]`` = ``x - S(x)``. Adding latent j changes each token's error by
    ``a_j^2 |W_j|^2 - 2 a_j r·W_j``; latents that never fire on the tokens get 0.
    """
    n, d_in = residual_small.shape
    return delta_mse_from_changes(large_codes, single_insertion_changes(large_codes, W_dec_large, residual_small),
                                  n, d_in)


@dataclass
class StitchingPath:
    """The path's points ``0..T+1``: point 0 is S, point t applies ``order[t-1]``, the last switches ``b_dec``.

    kind: ``[T+2]`` codes into :data:`STEP_KINDS`; group: ``[T+2]`` the group applied (-1 for start and bias);
    n_latents, mse, fvu, l0: ``[T+2]``. MSE is the mean over tokens and dimensions; FVU divides the summed squared
    error by the tokens' total variance.
    """

    order: Tensor
    kind: Tensor
    group: Tensor
    n_latents: Tensor
    mse: Tensor
    fvu: Tensor
    l0: Tensor

    @property
    def n_points(self) -> int:
        return self.mse.numel()

    def monotone_fraction(self) -> float:
        """Fraction of steps that do not raise the MSE (up to float noise)."""
        steps = self.mse[1:] - self.mse[:-1]
        tol = 1e-6 * float(self.mse.abs().max())
        return float((steps <= tol).float().mean()) if steps.numel() else 1.0

    def excess_over_endpoints(self) -> float:
        """How far the path's MSE rises above the worse endpoint, as a fraction of it: ``(max_t mse_t - max(mse_S,
        mse_L)) / max(mse_S, mse_L)``. 0 when the path stays between S's and L's MSE (the paper's monotone
        interpolation); unlike the AUC it stays meaningful when S and L are equally good."""
        worse = float(torch.maximum(self.mse[0], self.mse[-1]))
        if worse <= 0:
            return 0.0
        return max(float(self.mse.max()) - worse, 0.0) / worse

    def normalized_auc(self) -> float:
        """Area under ``(mse_t - mse_L) / (mse_S - mse_L)`` against the fraction of steps taken, in [0, 1] when MSE
        stays between the endpoints: 0 = all of L's gain at the first step, 0.5 = a straight line."""
        span = float(self.mse[0] - self.mse[-1])
        if self.n_points < 2 or abs(span) < 1e-12:
            return float("nan")
        y = (self.mse - self.mse[-1]) / span
        t = torch.linspace(0.0, 1.0, self.n_points, device=y.device, dtype=y.dtype)
        return float(torch.trapezoid(y, t))

    def masks_at(self, point: int, groups: LatentGroups) -> tuple[Tensor, Tensor, str]:
        """(keep_small ``[d_small]``, keep_large ``[d_large]``, decoder bias) of the stitched SAE at ``point``."""
        if not 0 <= point < self.n_points:
            raise IndexError(f"the path has points 0..{self.n_points - 1}, got {point}")
        applied = self.order[:min(point, self.order.numel())]
        keep_small = ~torch.isin(groups.small_group, applied)
        keep_large = torch.isin(groups.large_group, applied)
        return keep_small, keep_large, "large" if point == self.n_points - 1 else "small"


class _GroupScorer:
    """Non-zeros of S and L sorted by group, scoring and applying a group against the current residual.

    Applying group ``g`` changes token ``t``'s reconstruction by ``c_t = sum_e coef_e W[latent_e]`` over the group's
    non-zeros ``e`` on ``t`` (L's activations inserted, S's removed), so the summed squared error changes by
    ``sum_t |c_t|^2 - 2 r_t . c_t``. The first sum does not depend on the residual: it is computed once
    (:attr:`square`, from the decoders' pairwise dot products), and scoring a group needs only one dot product per
    non-zero, ``r_(row_e) . W[latent_e]``.
    """

    def __init__(self, small_codes: SparseCodes, large_codes: SparseCodes, W_dec_small: Tensor,
                 W_dec_large: Tensor, groups: LatentGroups) -> None:
        d_small = small_codes.d_sae
        self.W = torch.cat([W_dec_small, W_dec_large])  # [d_small + d_large, d_in]
        latent = torch.cat([small_codes.cols, large_codes.cols + d_small])
        coef = torch.cat([-small_codes.values, large_codes.values]).float()  # removing S-latents, inserting L-latents
        rows = torch.cat([small_codes.rows, large_codes.rows])
        group = torch.cat([groups.small_group, groups.large_group])[latent]
        n_tokens = small_codes.n_tokens
        order = torch.argsort(group * n_tokens + rows)
        self.latent, self.coef, self.rows, self.group = latent[order], coef[order], rows[order], group[order]
        counts = torch.bincount(self.group, minlength=groups.n_groups)
        self.ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)]).tolist()
        self.n_tokens = n_tokens
        self.square = self._squared_changes(groups.n_groups).tolist()

    def _squared_changes(self, n_groups: int) -> Tensor:
        """``[n_groups]`` float64: ``sum_t |c_t|^2`` of each group, as ``sum coef_e coef_f W[latent_e] . W[latent_f]``
        over the pairs of its non-zeros on one token (the decoders' Gram matrix when it is small enough to hold)."""
        out = torch.zeros(n_groups, dtype=torch.float64, device=self.W.device)
        if self.rows.numel() == 0:
            return out
        key = self.group * self.n_tokens + self.rows  # sorted: one run per (group, token)
        _, run_of, run_sizes = torch.unique_consecutive(key, return_inverse=True, return_counts=True)
        run_starts = torch.cumsum(run_sizes, 0) - run_sizes
        reps = run_sizes[run_of]  # [nnz] each non-zero meets every non-zero of its run, itself included
        gram = self.W @ self.W.T if self.W.shape[0] ** 2 <= GRAM_MAX_ENTRIES else None
        ends = torch.cumsum(reps, 0)
        first = 0
        while first < reps.numel():  # chunks of about PAIR_CHUNK (e, f) pairs
            last = max(int(torch.searchsorted(ends, int(ends[first]) - int(reps[first]) + PAIR_CHUNK, right=True)),
                       first + 1)
            e_idx = torch.arange(first, last, device=reps.device)
            chunk_reps = reps[first:last]
            e = torch.repeat_interleave(e_idx, chunk_reps)
            within = torch.arange(e.numel(), device=e.device) - torch.repeat_interleave(
                torch.cumsum(chunk_reps, 0) - chunk_reps, chunk_reps)
            f = run_starts[run_of[e]] + within
            a, b = self.latent[e], self.latent[f]
            dots = gram[a, b] if gram is not None else torch.einsum("ij,ij->i", self.W[a], self.W[b])
            out.index_add_(0, self.group[e], (self.coef[e] * self.coef[f] * dots).double())
            first = last
        return out

    def delta(self, g: int, residual: Tensor) -> float:
        """The change in summed squared error when group ``g`` is applied to ``residual`` ``[N, d_in]``."""
        lo, hi = self.ptr[g], self.ptr[g + 1]
        if lo == hi:
            return 0.0
        dots = torch.einsum("ij,ij->i", residual[self.rows[lo:hi]], self.W[self.latent[lo:hi]])
        return self.square[g] - 2.0 * float(dots @ self.coef[lo:hi])

    def apply(self, g: int, residual: Tensor) -> None:
        """Apply group ``g``: subtract its reconstruction change from ``residual`` ``[N, d_in]`` in place."""
        lo, hi = self.ptr[g], self.ptr[g + 1]
        if lo < hi:
            residual.index_add_(0, self.rows[lo:hi], self.W[self.latent[lo:hi]] * self.coef[lo:hi, None], alpha=-1.0)

    def entry_dots(self, residual: Tensor) -> Tensor:
        """``[nnz]``: ``r_(row_e) . W[latent_e]`` for every non-zero (:func:`entry_dots`)."""
        return entry_dots(residual, self.rows, self.latent, self.W)

    def all_deltas(self, residual: Tensor, n_groups: int) -> Tensor:
        """``[n_groups]`` change in summed squared error of each group applied alone to ``residual``."""
        cross = torch.zeros(n_groups, dtype=torch.float64, device=residual.device)
        cross.index_add_(0, self.group, (self.entry_dots(residual) * self.coef).double())
        return torch.tensor(self.square, dtype=torch.float64, device=residual.device) - 2.0 * cross


@torch.no_grad()
def stitching_path(small: SparseAutoencoder, large: SparseAutoencoder, x: Tensor, groups: LatentGroups,
                   small_codes: SparseCodes | None = None, large_codes: SparseCodes | None = None,
                   progress: bool = False, max_remeasured: int = 32,
                   residual_small: Tensor | None = None) -> StitchingPath:
    """Walk from S to L on ``x [N, d_in]`` one group at a time, greedily: the next group is the one that lowers
    the MSE most given the groups already applied.

    Lazy greedy: groups wait in a queue by their last measured gain; the head is re-measured against the current
    residual and taken if it is still the best. After ``max_remeasured`` re-measurements in one step the best of
    those is taken, which bounds the cost when many groups share tokens (dense latents). ``residual_small``
    (``x - S(x)``, ``[N, d_in]``) may be passed when the caller has it; it is not modified.
    """
    small_codes = small_codes if small_codes is not None else sparse_codes(small, x)
    large_codes = large_codes if large_codes is not None else sparse_codes(large, x)
    x = x.float()
    n, d_in = x.shape
    residual = (x - reconstruction(small, x)) if residual_small is None else residual_small.clone()
    total_variance = float((x - x.mean(0)).square().sum().clamp_min(1e-12))
    scorer = _GroupScorer(small_codes, large_codes, small.W_dec.detach().float(), large.W_dec.detach().float(), groups)
    gains = scorer.all_deltas(residual, groups.n_groups).tolist()
    kinds = groups.kinds()
    small_fires = torch.bincount(groups.small_group[small_codes.cols], minlength=groups.n_groups).tolist()
    large_fires = torch.bincount(groups.large_group[large_codes.cols], minlength=groups.n_groups).tolist()
    n_small, n_large = groups.n_small.tolist(), groups.n_large.tolist()

    sse = float(residual.double().square().sum())
    n_latents, nnz = small.d_sae, small_codes.values.numel()
    rec = {"kind": [0], "group": [-1], "n_latents": [n_latents], "sse": [sse], "nnz": [nnz]}
    order: list[int] = []
    heap = [(gain, g) for g, gain in enumerate(gains)]
    heapq.heapify(heap)
    bar = tqdm(total=len(heap), desc="stitching path", unit="group", disable=not progress, dynamic_ncols=True)
    fresh: list[tuple[float, int]] = []  # re-measured since the last step
    with one_thread():  # thousands of small steps: thread hand-offs cost more than they save (3x on 2 cores)
        while heap or fresh:
            if heap:
                _, g = heapq.heappop(heap)
                gain = scorer.delta(g, residual)
                best_stale = heap[0][0] if heap else float("inf")
                if gain > best_stale + 1e-9 * abs(best_stale) and len(fresh) < max_remeasured:
                    fresh.append((gain, g))  # no longer the best: keep looking
                    continue
                fresh.append((gain, g))
            fresh.sort(key=lambda item: item[0])
            gain, g = fresh[0]
            for item in fresh[1:]:
                heapq.heappush(heap, item)
            fresh = []
            scorer.apply(g, residual)
            sse += gain
            n_latents += n_large[g] - n_small[g]
            nnz += large_fires[g] - small_fires[g]
            order.append(g)
            for key, value in (("kind", STEP_KINDS.index(kinds[g])), ("group", g), ("n_latents", n_latents),
                               ("sse", sse), ("nnz", nnz)):
                rec[key].append(value)
            bar.update()
    bar.close()
    residual -= large.b_dec.detach().float() - small.b_dec.detach().float()
    for key, value in (("kind", STEP_KINDS.index("decoder_bias")), ("group", -1), ("n_latents", n_latents),
                       ("sse", float(residual.double().square().sum())), ("nnz", nnz)):
        rec[key].append(value)
    sse_t = torch.tensor(rec["sse"], dtype=torch.float64)
    return StitchingPath(
        order=torch.tensor(order, dtype=torch.long),
        kind=torch.tensor(rec["kind"], dtype=torch.int8),
        group=torch.tensor(rec["group"], dtype=torch.long),
        n_latents=torch.tensor(rec["n_latents"], dtype=torch.long),
        mse=(sse_t / (n * d_in)).float(),
        fvu=(sse_t / total_variance).float(),
        l0=torch.tensor(rec["nnz"], dtype=torch.float32) / n,
    )
