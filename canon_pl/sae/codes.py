"""An SAE's inference activations on many tokens, kept sparse, and its reconstruction of them, a chunk at a time:
what stitching, granularity and the meta-SAE's analyses all read."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from canon_pl.sae.base import SparseAutoencoder


@dataclass
class SparseCodes:
    """Non-zero inference activations of one SAE on ``n_tokens`` tokens: rows, cols, values ``[nnz]``."""

    rows: Tensor
    cols: Tensor
    values: Tensor
    n_tokens: int
    d_sae: int

    def counts(self) -> Tensor:
        """``[d_sae]`` on how many tokens each latent fires."""
        return torch.bincount(self.cols, minlength=self.d_sae)


@torch.no_grad()
def sparse_codes(sae: SparseAutoencoder, x: Tensor, chunk_tokens: int = 1024) -> SparseCodes:
    """Inference activations of ``sae`` on ``x [N, d_in]`` as sparse triples (dense only ``chunk_tokens`` at a time)."""
    rows, cols, values = [], [], []
    for start in range(0, x.shape[0], chunk_tokens):
        acts = sae.encode(x[start:start + chunk_tokens], inference=True)
        r, c = torch.nonzero(acts, as_tuple=True)
        rows.append(r + start)
        cols.append(c)
        values.append(acts[r, c])
    return SparseCodes(torch.cat(rows), torch.cat(cols), torch.cat(values), x.shape[0], sae.d_sae)


@torch.no_grad()
def reconstruction(sae: SparseAutoencoder, x: Tensor, chunk_tokens: int = 1024) -> Tensor:
    """``sae(x)`` at inference for ``x [N, d_in]``, ``chunk_tokens`` at a time."""
    return torch.cat([sae(x[s:s + chunk_tokens], inference=True) for s in range(0, x.shape[0], chunk_tokens)])


__all__ = ["SparseCodes", "reconstruction", "sparse_codes"]
