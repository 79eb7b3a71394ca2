"""Meta-SAE core (docs/design.md 1.3): decoder rows as data, decompositions of latents into meta-latents, FVE, baselines.

Pure torch: a meta-SAE is an ordinary :class:`SparseAutoencoder` (BatchTopK, small k) trained on the unit-normalised
decoder rows ``W_dec [d_base, d_in]`` of a base SAE. Nothing here imports Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from canon_pl.errors import CanonError
from canon_pl.sae import SAEConfig, SparseAutoencoder, build_sae


class MetaSAEError(CanonError, ValueError):
    """A base SAE or setting a meta-SAE cannot be trained or analysed with."""


def decoder_rows(sae: SparseAutoencoder) -> Tensor:
    """The base SAE's latent directions, unit-normalised: ``[d_sae, d_in]`` float32 (no tokens involved)."""
    rows = sae.W_dec.detach().float()
    if not torch.isfinite(rows).all():
        raise MetaSAEError(f"the base SAE's decoder ({sae.d_sae} x {sae.d_in}) contains NaN or Inf")
    return F.normalize(rows, dim=-1)


def check_meta_width(n_rows: int, d_meta: int) -> None:
    """A meta-SAE must be narrower than the number of rows it decomposes."""
    if d_meta >= n_rows:
        raise MetaSAEError(
            f"the meta-SAE has {d_meta} latents but the base SAE has only {n_rows} decoder rows: a meta-SAE must be "
            f"narrower than its base (the paper uses base/21, e.g. 49152 -> 2304); lower d_sae or pick a wider base"
        )


def sample_rows(rows: Tensor, batch_size: int, index: int, seed: int) -> Tensor:
    """Batch ``index`` of rows sampled with replacement: ``[batch_size, d_in]``, a pure function of (index, seed)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return rows[torch.randint(rows.shape[0], (batch_size,), generator=g).to(rows.device)]


def fraction_of_variance_explained(rows: Tensor, rows_hat: Tensor, centred: bool = True) -> float:
    """``1 - sum |r - r_hat|^2 / sum |r - mean(r)|^2`` over all rows ``[n, d_in]`` (``centred=False``: divided by
    ``sum |r|^2`` instead, which is ``n`` for unit rows; the two differ when the rows share a mean direction)."""
    total = (rows - rows.mean(0)).square().sum() if centred else rows.square().sum()
    return float(1.0 - (rows - rows_hat).square().sum() / total.clamp_min(1e-12))


def pca_variance_fraction(rows: Tensor, m: int) -> float:
    """Fraction of the centred variance of ``rows [n, d_in]`` in their top ``m`` principal directions: the most any
    reconstruction confined to an ``m``-dimensional subspace can explain (1 when ``m >= rank``)."""
    centred = rows.double() - rows.double().mean(0)
    singular = torch.linalg.svdvals(centred)
    variance = singular.square()
    return float(variance[:m].sum() / variance.sum().clamp_min(1e-24))


def random_unit_rows(n: int, d_in: int, seed: int = 0, device: torch.device | str = "cpu") -> Tensor:
    """``[n, d_in]`` independent uniformly random unit vectors (a floor: rows with no shared structure)."""
    g = torch.Generator().manual_seed(2_000_003 + seed)
    return F.normalize(torch.randn(n, d_in, generator=g), dim=-1).to(device)


def covariance_matched_rows(rows: Tensor, seed: int = 0) -> Tensor:
    """``[n, d_in]`` Gaussian rows with the mean and covariance of ``rows [n, d_in]``, normalised to unit length like
    decoder rows: a null with the decoder's anisotropy (its principal variances) and nothing else. A meta-SAE that
    explains the real rows no better than these has found anisotropy, not composition."""
    g = torch.Generator().manual_seed(3_000_017 + seed)
    x = rows.detach().double().cpu()
    mean = x.mean(0)
    centred = x - mean
    # the rows' own principal axes and variances: sample coordinates along them independently
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    std = s / max(x.shape[0] - 1, 1) ** 0.5
    z = torch.randn(x.shape[0], std.numel(), generator=g, dtype=torch.float64) * std
    return F.normalize((z @ vh + mean).float(), dim=-1).to(rows.device)


def pca_shuffled_rows(rows: Tensor, seed: int = 0) -> Tensor:
    """``[n, d_in]`` the rows with each principal coordinate shuffled across rows (its own permutation per
    coordinate), back in the original basis and normalised to unit length: the exact marginal of every principal
    coordinate (not only its variance, as :func:`covariance_matched_rows` keeps), with the dependence between
    coordinates, which is what a composition of a few directions makes, destroyed."""
    g = torch.Generator().manual_seed(4_000_037 + seed)
    x = rows.detach().double().cpu()
    mean = x.mean(0)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    coords = (x - mean) @ vh.T  # [n, r]
    shuffled = torch.stack([coords[torch.randperm(coords.shape[0], generator=g), j]
                            for j in range(coords.shape[1])], dim=1)
    return F.normalize((shuffled @ vh + mean).float(), dim=-1).to(rows.device)


@dataclass
class MetaDecomposition:
    """Every base latent as meta-latents: ``base [nnz]`` (non-decreasing), ``meta [nnz]``, ``value [nnz]`` > 0."""

    base: Tensor
    meta: Tensor
    value: Tensor
    n_base: int
    n_meta: int

    def of_latent(self, j: int) -> list[tuple[int, float]]:
        """The meta-latents of base latent ``j`` with their activations, largest first."""
        sel = self.base == j
        order = torch.argsort(self.value[sel], descending=True)
        return list(zip(self.meta[sel][order].tolist(), self.value[sel][order].tolist()))

    def users_of(self, m: int) -> list[tuple[int, float]]:
        """The base latents that use meta-latent ``m``, by activation, largest first."""
        sel = self.meta == m
        order = torch.argsort(self.value[sel], descending=True)
        return list(zip(self.base[sel][order].tolist(), self.value[sel][order].tolist()))

    def meta_per_latent(self) -> Tensor:
        """``[n_base]`` number of meta-latents each base latent uses."""
        return torch.bincount(self.base, minlength=self.n_base)

    def meta_density(self) -> Tensor:
        """``[n_meta]`` fraction of base latents that use each meta-latent."""
        return torch.bincount(self.meta, minlength=self.n_meta).float() / max(self.n_base, 1)


@torch.no_grad()
def decompose(meta_sae: SparseAutoencoder, rows: Tensor, chunk: int = 8192) -> tuple[MetaDecomposition, Tensor]:
    """Meta-latent activations of every row ``[n, d_in]`` at inference, and the reconstructed rows ``[n, d_in]``."""
    from canon_pl.sae.codes import reconstruction, sparse_codes

    codes = sparse_codes(meta_sae, rows, chunk)
    decomposition = MetaDecomposition(codes.rows, codes.cols, codes.values, rows.shape[0], meta_sae.d_sae)
    return decomposition, reconstruction(meta_sae, rows, chunk)


def with_decoder(base: SparseAutoencoder, W_dec: Tensor) -> SparseAutoencoder:
    """A copy of ``base`` whose decoder rows are ``W_dec [d_sae, d_in]`` (e.g. the meta-SAE's reconstruction of
    them, at the original rows' norms); encoder, biases and threshold unchanged."""
    import copy

    replaced = copy.deepcopy(base)
    with torch.no_grad():
        replaced.W_dec.copy_(W_dec)
    return replaced


def refit_encoder(W_dec: Tensor, rows: Tensor, k: int, steps: int, batch_size: int = 4096, lr: float = 1e-3,
                  seed: int = 0) -> SparseAutoencoder:
    """A BatchTopK meta-SAE with a fixed decoder ``W_dec [d_meta, d_in]`` whose encoder (``W_enc``, ``b_enc``,
    ``b_dec``, threshold) is trained on ``rows [n, d_in]`` with the same training step as any SAE.

    The paper's baselines: the decoder is the nearest latents of a smaller SAE, or random directions.
    """
    return fit_meta_sae(rows, W_dec.shape[0], k, steps, batch_size, lr, seed, fixed_decoder=W_dec)


def fit_meta_sae(rows: Tensor, d_meta: int, k: int, steps: int, batch_size: int = 4096, lr: float = 1e-3,
                 seed: int = 0, fixed_decoder: Tensor | None = None, desc: str | None = None,
                 encoder_bias: bool = True, b_dec_init: str = "mean") -> SparseAutoencoder:
    """A BatchTopK meta-SAE of ``d_meta`` latents trained on ``rows [n, d_in]`` in plain torch: the same
    initialisation, training step (AuxK included), Adam and decoder constraint as ``MetaSAEModule``, without
    Lightning. With ``fixed_decoder [d_meta, d_in]`` only the encoder side is trained. ``encoder_bias=False`` and
    ``b_dec_init="zeros"`` are the authors' meta-SAE (no encoder bias, decoder bias starting at 0); the defaults
    learn ``b_enc`` and start ``b_dec`` at the mean row.

    Used for the floors a meta-SAE's FVE is read against: the same meta-SAE trained on the base's initial decoder,
    and on random unit rows. ``desc`` shows a progress bar with that label.
    """
    with torch.inference_mode(False), torch.enable_grad():  # callable from analysis code that runs without grad
        return _fit_meta_sae(rows.clone(), d_meta, k, steps, batch_size, lr, seed,
                             None if fixed_decoder is None else fixed_decoder.clone(), desc, encoder_bias, b_dec_init)


def _fit_meta_sae(rows: Tensor, d_meta: int, k: int, steps: int, batch_size: int, lr: float, seed: int,
                  fixed_decoder: Tensor | None, desc: str | None, encoder_bias: bool,
                  b_dec_init: str) -> SparseAutoencoder:
    from tqdm.auto import tqdm

    if b_dec_init not in ("mean", "zeros"):
        raise MetaSAEError(f"b_dec_init must be 'mean' or 'zeros', got {b_dec_init!r}")
    d_in = rows.shape[1]
    check_meta_width(rows.shape[0], d_meta)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = build_sae(SAEConfig(d_in=d_in, d_sae=d_meta, architecture="batchtopk", k=k, encoder_bias=encoder_bias,
                                  dead_tokens_threshold=max(steps * batch_size // 4, 1))).to(rows.device)
    with torch.no_grad():
        if fixed_decoder is not None:
            sae.W_dec.copy_(F.normalize(fixed_decoder.float(), dim=-1))
            sae.W_enc.copy_(sae.W_dec.T)
        if b_dec_init == "mean":  # as MetaSAEModule
            sae.b_dec.copy_(rows.mean(0))
    if fixed_decoder is not None:
        sae.W_dec.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in sae.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.99))
    sae.train()
    for step in tqdm(range(steps), desc=desc, unit="step", disable=desc is None, dynamic_ncols=True):
        loss = sae.training_forward(sample_rows(rows, batch_size, step, seed)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if fixed_decoder is None:
            sae.remove_parallel_decoder_grad()
        optimizer.step()
        if fixed_decoder is None:
            sae.after_optimizer_step()
    return sae.eval()
