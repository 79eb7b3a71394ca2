"""Consistency of two dictionaries the way the literature measures it: a one-to-one matching of decoder rows.

Paulo & Belrose (2025, "Sparse Autoencoders Trained on the Same Data Learn Different Features", arXiv 2501.16615)
match the latents of two SAEs one to one with the Hungarian algorithm on decoder cosine and report the share of
matched pairs above a cosine threshold; SynthSAEBench scores recovery of a known dictionary the same way. Here:

- the matching maximises the summed cosine of unit decoder rows (``scipy.optimize.linear_sum_assignment``) over the
  ``min(n, m)`` latents of the smaller dictionary;
- ``mean_matched_cosine`` is the mean cosine over those pairs, ``shared_at`` the share of the smaller dictionary's
  latents whose partner lies at or above each threshold (0.7 and 0.9 by default);
- when ``n * m`` exceeds ``dense_limit`` the cost matrix would be too large, so each row keeps its ``candidates``
  nearest rows of the other dictionary (computed in chunks) and the matching runs on that sparse graph
  (``scipy.sparse.csgraph.min_weight_full_bipartite_matching``); a row with no candidate left is matched to nothing
  and counts as not shared (``method`` says which ran). Memory stays ``O((n + m) * candidates)``.

Two seeds of one width measure seed consistency; adjacent widths measure how much of the smaller dictionary the
larger one keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

DENSE_LIMIT = 4096 * 4096
"""Largest ``n * m`` matched on the dense cost matrix (64 MiB of float32)."""
CANDIDATES = 64
"""Nearest rows kept per row for the sparse matching."""
THRESHOLDS = (0.7, 0.9)


def _unit(rows: Tensor) -> Tensor:
    return torch.nn.functional.normalize(rows.detach().float(), dim=-1)


def _dense_matching(a: Tensor, b: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from scipy.optimize import linear_sum_assignment

    cosine = (a @ b.T).numpy()
    rows, cols = linear_sum_assignment(cosine, maximize=True)
    return rows, cols, cosine[rows, cols]


def _sparse_matching(a: Tensor, b: Tensor, candidates: int, chunk: int = 1024
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``a`` (the smaller) matched to rows of ``b`` among each one's ``candidates`` nearest (both ways)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    pieces_i, pieces_j, pieces_v = [], [], []  # the candidate edges as arrays (a Python dict of 2M pairs took 0.5 GB)
    for left, right, transpose in ((a, b, False), (b, a, True)):
        k = min(candidates, right.shape[0])
        for start in range(0, left.shape[0], chunk):
            values, index = (left[start:start + chunk] @ right.T).topk(k, dim=1)
            own = torch.arange(start, start + values.shape[0]).repeat_interleave(k)
            other = index.flatten()
            pieces_i.append((other if transpose else own).numpy())
            pieces_j.append((own if transpose else other).numpy())
            pieces_v.append(values.flatten().double().numpy())
    i, j, cos = np.concatenate(pieces_i), np.concatenate(pieces_j), np.concatenate(pieces_v)
    _, first = np.unique(i.astype(np.int64) * b.shape[0] + j, return_index=True)  # an edge found both ways once
    i, j, cos = i[first], j[first], cos[first]
    # weights must be positive: 2 - cosine lies in [1, 3] and is smallest for the most similar pair
    graph = coo_matrix((2.0 - cos, (i, j)), shape=(a.shape[0], b.shape[0])).tocsr()
    try:
        rows, cols = min_weight_full_bipartite_matching(graph)
    except ValueError:  # no matching covers every row on the candidate graph: match greedily by cosine instead
        order = np.argsort(-cos)
        used_a, used_b, rows_l, cols_l = set(), set(), [], []
        for t in order:
            if i[t] not in used_a and j[t] not in used_b:
                used_a.add(i[t])
                used_b.add(j[t])
                rows_l.append(i[t])
                cols_l.append(j[t])
        rows, cols = np.array(rows_l, dtype=int), np.array(cols_l, dtype=int)
    matched = np.asarray(graph[rows, cols]).ravel() if len(rows) else np.zeros(0)
    return rows, cols, 2.0 - matched


def matched_consistency(decoder_a: Tensor, decoder_b: Tensor, thresholds: Sequence[float] = THRESHOLDS,
                        dense_limit: int = DENSE_LIMIT, candidates: int = CANDIDATES) -> dict[str, Any]:
    """One-to-one matching of the rows of ``decoder_a [n, d_in]`` and ``decoder_b [m, d_in]`` by decoder cosine.

    Returns ``mean_matched_cosine`` (over the ``min(n, m)`` latents of the smaller dictionary; an unmatched one counts
    as cosine 0), ``shared_at`` (``{"0.7": share, ...}`` of the smaller dictionary's latents whose partner is at least
    that similar), ``n_smaller``, ``method`` (``dense`` or ``sparse``) and ``partner`` ``[min(n, m)]`` (each latent of
    the smaller dictionary's partner in the other, -1 for none; not JSON: for callers that need the pairs)."""
    a, b = _unit(decoder_a), _unit(decoder_b)
    swapped = a.shape[0] > b.shape[0]
    small, large = (b, a) if swapped else (a, b)
    dense = small.shape[0] * large.shape[0] <= dense_limit
    rows, cols, cosine = _dense_matching(small, large) if dense else _sparse_matching(small, large, candidates)
    n = small.shape[0]
    per_latent = np.zeros(n)
    per_latent[rows] = cosine
    partner = np.full(n, -1)
    partner[rows] = cols
    return {"mean_matched_cosine": float(per_latent.mean()) if n else None,
            "shared_at": {f"{t:g}": float((per_latent >= t).mean()) if n else None for t in thresholds},
            "n_smaller": n, "smaller": "b" if swapped else "a", "method": "dense" if dense else "sparse",
            "partner": torch.from_numpy(partner)}


def consistency_summary(decoder_a: Tensor, decoder_b: Tensor, **options: Any) -> dict[str, Any]:
    """:func:`matched_consistency` without the partner array: what a results file records."""
    result = matched_consistency(decoder_a, decoder_b, **options)
    result.pop("partner")
    return result


__all__ = ["CANDIDATES", "DENSE_LIMIT", "THRESHOLDS", "consistency_summary", "matched_consistency"]
