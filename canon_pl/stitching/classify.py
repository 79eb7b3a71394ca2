"""Novel vs reconstruction latents of a larger SAE against a smaller one, by the definition and by the cosine proxy,
with the diagnostics that say whether the answer means anything (Leask et al. 2025, SAE stitching).

- **By definition** (the paper's): an L-latent is *novel* when adding it alone to S (with its exact L activation)
  lowers S's MSE on held-out tokens, a *reconstruction* latent when it raises it (it double counts what S has).
- **By cosine** (the proxy): novel when no S decoder row lies within cosine ``tau`` of its decoder row.
- **Moved**: an L-latent whose decoder row is no longer within cosine ``tau`` of its own random initialisation. A
  latent that never left its start is "novel" by cosine for no reason of width; the novel fraction among moved
  latents removes them.
- **Cross-seed control**: the same classification of L against an SAE of L's own width that differs only in its init
  seed. Whatever "novel" fraction that gives is what seeds alone produce; a cross-width fraction means something
  about width only above it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from canon_pl.sae import SparseAutoencoder
from canon_pl.metrics.matching import LatentMatch, match_latents
from canon_pl.stitching.path import (
    SparseCodes,
    delta_mse_from_changes,
    reconstruction,
    single_insertion_changes,
    sparse_codes,
)


@dataclass
class LatentClasses:
    """Per L-latent ``[d_large]``: ``match`` (decoder cosines against S), ``delta_mse`` (MSE change when added alone
    to S), ``fire_count`` (held-out tokens it fires on), ``init_cos`` (cosine of its decoder row to its initial row;
    ``None`` when the initialisation is unknown); ``codes`` and ``changes [nnz]`` (each non-zero's share of
    ``delta_mse``, :func:`~canon_pl.stitching.path.single_insertion_changes`) for the per-chunk spread."""

    tau: float
    match: LatentMatch
    delta_mse: Tensor
    fire_count: Tensor
    init_cos: Tensor | None = None
    codes: SparseCodes | None = None
    changes: Tensor | None = None

    @property
    def fires(self) -> Tensor:
        return self.fire_count > 0

    @property
    def novel_by_definition(self) -> Tensor:
        """``[d_large]`` bool: fires on the tokens and lowers S's MSE when added alone."""
        return self.fires & (self.delta_mse < 0)

    @property
    def moved(self) -> Tensor | None:
        """``[d_large]`` bool: decoder row no longer within cosine ``tau`` of its initialisation."""
        return None if self.init_cos is None else self.init_cos < self.tau

    def summary(self) -> dict[str, Any]:
        """The fractions every report states (``None`` where a set is empty or the initialisation unknown)."""
        fires, novel_cos, novel_def = self.fires, self.match.is_novel, self.novel_by_definition

        def frac(mask: Tensor, among: Tensor | None = None) -> float | None:
            values = mask if among is None else mask[among]
            return float(values.float().mean()) if values.numel() else None

        out: dict[str, Any] = {
            "novel_fraction_cosine": frac(novel_cos),
            "novel_fraction_definition": frac(novel_def, fires),
            "n_firing": int(fires.sum()),
            "median_max_cos": float(self.match.large_max_cos.median()),
            "agreement": frac(novel_cos == novel_def, fires),
        }
        moved = self.moved
        out["stuck_at_init_fraction"] = None if moved is None else frac(~moved)
        out["median_init_cos"] = None if self.init_cos is None else float(self.init_cos.median())
        out["novel_fraction_cosine_moved"] = None if moved is None else frac(novel_cos, moved)
        out["novel_fraction_definition_moved"] = None if moved is None else frac(novel_def, moved & fires)
        return out


def row_cosines(a: Tensor, b: Tensor) -> Tensor:
    """``[n]`` cosine of row i of ``a [n, d]`` with row i of ``b [n, d]``."""
    return torch.nn.functional.cosine_similarity(a.float(), b.float().to(a.device), dim=-1)


@torch.no_grad()
def classify_latents(small: SparseAutoencoder, large: SparseAutoencoder, x: Tensor, tau: float,
                     large_initial_decoder: Tensor | None = None, large_codes: SparseCodes | None = None,
                     residual_small: Tensor | None = None, progress: bool = False) -> LatentClasses:
    """Classify every latent of ``large`` against ``small`` on raw held-out activations ``x [N, d_in]``.

    ``large_initial_decoder [d_large, d_in]`` (see :func:`canon_pl.io.initial_decoder`) adds the moved/stuck split;
    ``large_codes`` and ``residual_small`` (``x - small(x)``) are reused when the caller has them.
    """
    match = match_latents(small.W_dec, large.W_dec, tau, progress=progress)
    codes = large_codes if large_codes is not None else sparse_codes(large, x)
    residual = residual_small if residual_small is not None else x - reconstruction(small, x)
    changes = single_insertion_changes(codes, large.W_dec.detach().float(), residual)
    delta = delta_mse_from_changes(codes, changes, *residual.shape)
    init_cos = None
    if large_initial_decoder is not None:
        if large_initial_decoder.shape != large.W_dec.shape:
            raise ValueError(f"initial decoder {tuple(large_initial_decoder.shape)} does not match W_dec "
                             f"{tuple(large.W_dec.shape)}")
        init_cos = row_cosines(large.W_dec.detach(), large_initial_decoder)
    return LatentClasses(tau, match, delta, codes.counts(), init_cos, codes, changes)


@torch.no_grad()
def definition_chunk_spread(classes: LatentClasses, n_chunks: int = 8) -> dict[str, Any]:
    """The novel fraction by definition on ``n_chunks`` disjoint, consecutive chunks of the held-out tokens (each
    chunk's firing latents, each latent's MSE change measured on that chunk alone): how much of a fraction is token
    noise. Read from ``classes``' per-non-zero changes (:func:`classify_latents` keeps them), so it costs no
    second pass over the residual. Returns ``per_chunk``, ``mean``, ``std``, ``chunk_tokens``."""
    codes, changes = classes.codes, classes.changes
    if codes is None or changes is None:
        raise ValueError("definition_chunk_spread needs the classes classify_latents returns (with their changes)")
    n = codes.n_tokens
    size = max(n // n_chunks, 1)
    fractions = []
    for start in range(0, size * n_chunks, size):
        keep = (codes.rows >= start) & (codes.rows < start + size)
        fires = torch.bincount(codes.cols[keep], minlength=codes.d_sae) > 0
        if not bool(fires.any()):
            continue
        delta = delta_mse_from_changes(codes, changes, n, 1, keep)  # the sign is all the fraction reads
        fractions.append(float((delta[fires] < 0).float().mean()))
    values = torch.tensor(fractions, dtype=torch.float64)
    return {"per_chunk": fractions, "mean": float(values.mean()) if fractions else None,
            "std": float(values.std()) if len(fractions) > 1 else None, "chunk_tokens": size}


def stuck_at_init_fraction(export_dir: str | os.PathLike, tau: float = 0.7) -> float | None:
    """Fraction of an export's decoder rows still within cosine ``tau`` of their initialisation (``None`` when the
    export does not record its init seed, or cannot be read): how far training has moved the dictionary."""
    from canon_pl.io import CheckpointError, initial_decoder, load_sae

    initial = initial_decoder(export_dir)
    if initial is None:
        return None
    try:
        trained = load_sae(export_dir).W_dec.detach()
    except CheckpointError:
        return None
    return float((row_cosines(trained, initial) >= tau).float().mean())


__all__ = ["LatentClasses", "classify_latents", "definition_chunk_spread", "row_cosines", "stuck_at_init_fraction"]
