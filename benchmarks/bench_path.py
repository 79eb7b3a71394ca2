"""The stitching path's group scoring: per-(group, token) change vectors (canon-pl before this benchmark) against
the library's (a fixed squared-change term per group plus one dot product per non-zero), in one run.

Scoring every group against the residual opens each path and each point of the granularity curve (seven to nine
paths per pair and as many for its control). The old scorer built the reconstruction change of every (group, token)
pair (``[pairs, d_in]``) and squared it on every call; the library computes each group's ``sum_t |c_t|^2`` once and
then needs ``r . W`` per non-zero, taken from one ``residual @ W.T`` on a narrow pair. Both are timed on the same
BatchTopK-like codes at the study's shape (d_in 576, S 576 -> L 1152, k = 32 each, 8,192 tokens) with groups from
the decoder cosine at 0.3, then a whole greedy path is walked with the library. The two scorers' gains are checked
equal.
Ends with ``ratio: <old all-groups scoring time / library's, its once-per-path squared changes included>`` (> 1:
the library is faster).
Usage: ``python benchmarks/bench_path.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from canon_pl.sae import SAEConfig, build_sae
from canon_pl.stitching.granularity import threshold_edges
from canon_pl.stitching.groups import groups_from_edges
from canon_pl.stitching.path import ENTRY_CHUNK, _GroupScorer, reconstruction, sparse_codes, stitching_path


def old_all_deltas(scorer: _GroupScorer, residual: torch.Tensor, n_groups: int) -> torch.Tensor:
    """The previous scorer: each (group, token) pair's change vector built, squared and dotted with the residual."""
    out = torch.zeros(n_groups, dtype=torch.float64)
    ptr = torch.tensor(scorer.ptr)
    total, start = scorer.rows.numel(), 0
    while start < total:
        end = int(ptr[torch.searchsorted(ptr, start + ENTRY_CHUNK, right=True) - 1])
        if end <= start:
            end = int(ptr[torch.searchsorted(ptr, start, right=True)])
        key = scorer.group[start:end] * scorer.n_tokens + scorer.rows[start:end]
        pairs, inverse = torch.unique_consecutive(key, return_inverse=True)
        change = residual.new_zeros(pairs.numel(), residual.shape[1])
        change.index_add_(0, inverse, scorer.coef[start:end, None] * scorer.W[scorer.latent[start:end]])
        r = residual[pairs % scorer.n_tokens]
        out.index_add_(0, pairs // scorer.n_tokens, (change.square() - 2.0 * r * change).sum(-1).double())
        start = end
    return out


def batchtopk_like(d_in: int, d_sae: int, k: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    sae = build_sae(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="batchtopk", k=k))
    return sae.eval()


def timed(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small shape, for a smoke run")
    args = parser.parse_args()
    d_in, d_small, n_tokens, k = (64, 64, 512, 8) if args.quick else (576, 576, 8192, 32)
    small = batchtopk_like(d_in, d_small, k, seed=0)
    large = batchtopk_like(d_in, 2 * d_small, k, seed=1)
    with torch.no_grad():  # L shares half its directions with S, nudged: swaps as well as novel latents
        large.W_dec[:d_small // 2] = F.normalize(small.W_dec[:d_small // 2] + 0.5 * torch.randn(d_small // 2, d_in)
                                                 / d_in ** 0.5, dim=-1)
    x = torch.randn(n_tokens, d_in)
    for sae in (small, large):  # a threshold that keeps about k latents per token
        pre = sae.pre_activations(x).flatten()
        sae.threshold.fill_(float(pre.kthvalue(pre.numel() - k * n_tokens).values))
        sae.threshold_initialized.fill_(True)
    small_codes, large_codes = sparse_codes(small, x), sparse_codes(large, x)
    cosine = F.normalize(small.W_dec, dim=-1) @ F.normalize(large.W_dec, dim=-1).T
    groups = groups_from_edges(small.d_sae, large.d_sae, *threshold_edges(cosine, 0.3))
    residual = x - reconstruction(small, x)
    repeats = 2 if args.quick else 3
    setup, scorer = timed(lambda: _GroupScorer(small_codes, large_codes, small.W_dec.float(), large.W_dec.float(),
                                               groups), repeats)
    old_time, old = timed(lambda: old_all_deltas(scorer, residual, groups.n_groups), repeats)
    new_time, new = timed(lambda: scorer.all_deltas(residual, groups.n_groups), repeats)
    worst = float((new - old).abs().max() / old.abs().max())
    assert worst < 1e-4, f"the scorers disagree: {worst:.2e} of the largest gain"
    path_time, path = timed(lambda: stitching_path(small, large, x, groups, small_codes, large_codes), 1)
    nnz = small_codes.values.numel() + large_codes.values.numel()
    print(f"shape: d_in {d_in}, S {small.d_sae} -> L {large.d_sae}, {n_tokens:,} tokens, {nnz / n_tokens:.1f} "
          f"non-zeros per token, {groups.n_groups:,} groups; {torch.get_num_threads()} threads")
    print(f"all groups scored, old (change vector per group and token): {old_time * 1e3:.1f} ms")
    print(f"all groups scored, library: {new_time * 1e3:.1f} ms (+ {setup * 1e3:.1f} ms once per path for the "
          f"squared changes); gains agree to {worst:.1e} of the largest")
    print(f"one greedy path, library: {path_time:.2f} s over {path.n_points - 2:,} steps "
          f"({path_time / max(path.n_points - 2, 1) * 1e3:.2f} ms a step)")
    print(f"ratio: {old_time / (new_time + setup):.2f}")


if __name__ == "__main__":
    main()
