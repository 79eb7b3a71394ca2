"""What a trained meta-SAE says about its base SAE, and its files (``analysis.json`` + ``analysis.safetensors``).

See docs/design.md 1.3 and docs/meta_sae_results.md for every field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from canon_pl.io.document import DocumentKind
from canon_pl.io.results import read_results, write_results
from canon_pl.io.validate import STRUCTURAL_ERRORS
from canon_pl.meta.decomposition import (
    MetaDecomposition,
    MetaSAEError,
    check_meta_width,
    covariance_matched_rows,
    decoder_rows,
    decompose,
    fit_meta_sae,
    fraction_of_variance_explained,
    pca_shuffled_rows,
    pca_variance_fraction,
    random_unit_rows,
    refit_encoder,
    with_decoder,
)
from canon_pl.sae import SparseAutoencoder
from canon_pl.metrics.matching import match_latents
from canon_pl.metrics.spliced import SplicedLoss
from canon_pl.sae.codes import reconstruction

FORMAT_NAME = "canon_pl.meta_sae_analysis"
FORMAT_VERSION = 3
"""2: uncentred FVE, the PCA caps and the floors (initial decoder, random unit rows); an optional ``width_sweep``.
3: the floors that keep the decoder's anisotropy (``gaussian_matched``, ``pca_shuffled``)."""
META_ANALYSIS = DocumentKind(FORMAT_NAME, FORMAT_VERSION, "meta-SAE analysis", MetaSAEError,
                             rebuild="rebuild it with `canon-pl meta-sae --sae <its base SAE>`")
"""A meta-SAE analysis JSON (docs/meta_sae_results.md)."""
ANALYSIS_NAME = "analysis"
FLOOR_NAMES = ("random_rows", "initial_decoder", "gaussian_matched", "pca_shuffled")
"""The floors a meta-SAE's FVE is read against, as keys of ``floors`` in an analysis (``initial_decoder`` is
``None`` when the base's initial decoder was not given). The first two are isotropic (random unit rows; a Kaiming
initial decoder is the same); the last two keep the decoder's own anisotropy (Gaussian rows with its mean and
covariance; its rows with each principal coordinate shuffled across rows), so only structure beyond anisotropy, such
as rows composed of a few shared directions, lifts the FVE above them. Analyses written before version 3 have only
the first two."""


def higher_floor(floors: dict[str, Any] | None) -> float | None:
    """The higher of the floors in ``floors`` that were measured, or ``None`` when none was (no floors run)."""
    measured = [float(floors[name]) for name in FLOOR_NAMES if isinstance((floors or {}).get(name), float)]
    return max(measured) if measured else None


def floor_text(floors: dict[str, Any] | None) -> str:
    """The measured floors in words, e.g. "random rows 0.120; initial decoder 0.080" ("" when none was run)."""
    return "; ".join(f"{name.replace('_', ' ')} {floors[name]:.3f}" for name in FLOOR_NAMES
                     if isinstance((floors or {}).get(name), float))


def _quantiles(values: Tensor) -> dict[str, float]:
    q = torch.quantile(values.float(), torch.tensor([0.1, 0.5, 0.9], device=values.device)).tolist()
    return {"mean": float(values.float().mean()), "q10": q[0], "median": q[1], "q90": q[2],
            "above_0.7": float((values >= 0.7).float().mean())}


@dataclass
class MetaAnalysis:
    """The summary (JSON-ready), the decomposition and the per-meta-latent arrays."""

    summary: dict[str, Any]
    decomposition: MetaDecomposition
    arrays: dict[str, Tensor]


@torch.no_grad()
def analyze_meta_sae(meta: SparseAutoencoder, base: SparseAutoencoder,
                     smaller: dict[int, SparseAutoencoder] | None = None, activations: Tensor | None = None,
                     spliced_loss: SplicedLoss | None = None, baseline_steps: int = 300,
                     baseline_batch_size: int = 4096, seed: int = 0, initial_rows: Tensor | None = None,
                     floor_steps: int = 0, floor_batch_size: int = 4096, floor_lr: float = 1e-3,
                     floor_b_dec_init: str = "mean", sweep_widths: Sequence[int] = ()) -> MetaAnalysis:
    """Decompose every base latent, measure FVE, compare meta-latents with smaller SAEs' latents, and (given raw
    ``activations [N, d_in]`` of the base SAE's hook point) the base SAE with its decoder replaced by the meta-SAE's
    reconstruction. ``baseline_steps > 0`` also fits the paper's baselines (meta-decoder = nearest latents of each
    smaller SAE, or random directions; only the encoder trained).

    Always: FVE centred and uncentred, and the PCA caps (variance of the rows in their top ``min(n_meta, d_in)`` and
    top ``k`` principal directions). ``floor_steps > 0`` trains the same meta-SAE (width, k) from scratch on random
    unit rows and, given ``initial_rows [n_base, d_in]`` (the base's decoder at initialisation), on those: an FVE
    is a finding about learned structure only above these floors. ``sweep_widths`` (meta-latent counts) adds
    ``width_sweep``: the same measurements for meta-SAEs of those widths trained from scratch as long as the floors
    (see :func:`meta_width_sweep`), so one analysis can show the paper's geometry beside the one it reads. A sweep
    width equal to this meta-SAE's own is trained again on purpose: every sweep row then has its floors' budget.
    """
    rows = decoder_rows(base).to(meta.W_dec.device)
    if meta.d_in != rows.shape[1]:
        raise MetaSAEError(f"the meta-SAE reads {meta.d_in}-dimensional rows but the base SAE's rows have "
                           f"{rows.shape[1]}: it was trained on another SAE")
    decomposition, rows_hat = decompose(meta, rows)
    per_latent = decomposition.meta_per_latent().float()
    density = decomposition.meta_density()
    summary: dict[str, Any] = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "n_base": base.d_sae, "n_meta": meta.d_sae, "d_in": rows.shape[1], "k": meta.cfg.k, "encoder_bias": meta.cfg.encoder_bias,
        "fve": fraction_of_variance_explained(rows, rows_hat),
        "fve_uncentred": fraction_of_variance_explained(rows, rows_hat, centred=False),
        "pca_cap": {"m": min(meta.d_sae, rows.shape[1]),
                    "fraction": pca_variance_fraction(rows, min(meta.d_sae, rows.shape[1])),
                    "top_k_fraction": pca_variance_fraction(rows, int(meta.cfg.k or 1))},
        "mean_meta_per_latent": float(per_latent.mean()),
        "base_latents_without_meta": float((per_latent == 0).float().mean()),
        "dead_meta_fraction": float((density == 0).float().mean()),
    }
    arrays: dict[str, Tensor] = {"decomposition_base": decomposition.base, "decomposition_meta": decomposition.meta,
                                 "decomposition_value": decomposition.value, "meta_density": density}
    summary["nearest_in_smaller"] = {}
    for width, sae in sorted((smaller or {}).items()):
        match = match_latents(sae.W_dec.to(rows.device), meta.W_dec, tau=0.7)
        summary["nearest_in_smaller"][str(width)] = _quantiles(match.large_max_cos)
        arrays[f"nearest_cos_{width}"], arrays[f"nearest_index_{width}"] = match.large_max_cos, match.large_nearest
    if activations is not None:
        x = activations.to(rows.device).float()
        norms = base.W_dec.detach().float().norm(dim=-1, keepdim=True)
        replaced = with_decoder(base, rows_hat * norms)
        total = (x - x.mean(0)).square().sum().clamp_min(1e-12)
        summary["base_reconstruction"] = {}
        for name, sae in (("original", base), ("meta_decoder", replaced)):
            err = (x - reconstruction(sae, x)).square()
            summary["base_reconstruction"][name] = {"mse": float(err.mean()), "fvu": float(err.sum() / total)}
        if spliced_loss is not None:
            losses = spliced_loss({"original": lambda h: base(h.float(), inference=True),
                                   "meta_decoder": lambda h: replaced(h.float(), inference=True)})
            summary["spliced"] = {name: {"ce_loss": v["ce_sae"], "ce_recovered": v["ce_recovered"]}
                                  for name, v in losses.items()}
            summary["spliced"]["ce_clean"] = losses["original"]["ce_clean"]
            summary["spliced"]["ce_zero"] = losses["original"]["ce_zero"]
    if baseline_steps > 0:
        summary["baselines"] = _baselines(meta, rows, smaller or {}, arrays, baseline_steps, baseline_batch_size, seed)
    if floor_steps > 0:
        summary["floors"] = meta_floors(meta, rows, initial_rows, floor_steps, floor_batch_size, floor_lr, seed,
                                        floor_b_dec_init)
    if sweep_widths:
        if floor_steps <= 0:
            raise MetaSAEError("a width sweep trains each width as long as the floors: give floor_steps > 0")
        summary["width_sweep"] = meta_width_sweep(rows, initial_rows, sweep_widths, int(meta.cfg.k), floor_steps,
                                                  floor_batch_size, floor_lr, seed, meta.cfg.encoder_bias,
                                                  floor_b_dec_init)
    return MetaAnalysis(summary, decomposition, arrays)


def meta_floors(meta: SparseAutoencoder, rows: Tensor, initial_rows: Tensor | None, steps: int, batch_size: int,
                lr: float, seed: int, b_dec_init: str = "mean") -> dict[str, Any]:
    """FVE (centred) of the same meta-SAE (width, k, encoder bias or not, ``b_dec_init``) trained from scratch on
    each null of :data:`FLOOR_NAMES`: random unit rows, the base's initial decoder rows ``[n_base, d_in]`` (``None``
    when not given), Gaussian rows matched to ``rows``' mean and covariance, and ``rows`` with each principal
    coordinate shuffled; each as many rows as the base has."""
    n, d_in = rows.shape
    candidates = {"random_rows": random_unit_rows(n, d_in, seed, rows.device),
                  "gaussian_matched": covariance_matched_rows(rows, seed),
                  "pca_shuffled": pca_shuffled_rows(rows, seed)}
    if initial_rows is not None:
        if initial_rows.shape != rows.shape:
            raise MetaSAEError(f"the initial decoder {tuple(initial_rows.shape)} does not match the base's rows "
                               f"{tuple(rows.shape)}")
        candidates["initial_decoder"] = F.normalize(initial_rows.float().to(rows.device), dim=-1)
    out: dict[str, Any] = {"steps": steps, "batch_size": batch_size, "initial_decoder": None}
    for name, floor_rows in candidates.items():
        fitted = fit_meta_sae(floor_rows, meta.d_sae, int(meta.cfg.k), steps, batch_size, lr, seed,
                              desc=f"meta-SAE floor: {name.replace('_', ' ')}", encoder_bias=meta.cfg.encoder_bias,
                              b_dec_init=b_dec_init)
        out[name] = fraction_of_variance_explained(floor_rows, decompose(fitted, floor_rows)[1])
    return out


def meta_width_sweep(rows: Tensor, initial_rows: Tensor | None, widths: Sequence[int], k: int, steps: int,
                     batch_size: int, lr: float, seed: int, encoder_bias: bool = True,
                     b_dec_init: str = "mean") -> list[dict[str, Any]]:
    """Meta-SAEs of each width in ``widths`` trained from scratch on ``rows [n_base, d_in]`` (k, steps, batch, lr,
    initialisation as given), each read against its own floors and PCA cap. One entry per width, ascending:
    ``{"n_meta", "per_d_in", "rows_per_meta", "fve", "fve_uncentred", "floors", "pca_cap"}``.

    The paper's meta-SAE is 3 x d_in wide on a base of 64 x d_in rows (21 rows per meta-latent); a narrow base
    cannot match both ratios at once, and a sweep shows where the floors stop being informative."""
    n, d_in = rows.shape
    out = []
    for width in sorted(set(int(w) for w in widths)):
        check_meta_width(n, width)
        fitted = fit_meta_sae(rows, width, k, steps, batch_size, lr, seed, desc=f"meta-SAE width sweep: {width}",
                              encoder_bias=encoder_bias, b_dec_init=b_dec_init)
        rows_hat = decompose(fitted, rows)[1]
        out.append({"n_meta": width, "per_d_in": width / d_in, "rows_per_meta": n / width,
                    "fve": fraction_of_variance_explained(rows, rows_hat),
                    "fve_uncentred": fraction_of_variance_explained(rows, rows_hat, centred=False),
                    "floors": meta_floors(fitted, rows, initial_rows, steps, batch_size, lr, seed, b_dec_init),
                    "pca_cap": pca_variance_fraction(rows, min(width, d_in))})
    return out


def _baselines(meta: SparseAutoencoder, rows: Tensor, smaller: dict[int, SparseAutoencoder],
               arrays: dict[str, Tensor], steps: int, batch_size: int, seed: int) -> dict[str, float]:
    """FVE with the meta-decoder replaced by fixed directions and only the encoder trained."""
    g = torch.Generator().manual_seed(1_000_003 + seed)  # not seed itself: that stream may be the data's own
    candidates = {"random": F.normalize(torch.randn(meta.d_sae, meta.d_in, generator=g), dim=-1).to(rows.device)}
    for width, sae in sorted(smaller.items()):
        candidates[f"smaller_{width}"] = sae.W_dec.detach().float().to(rows.device)[arrays[f"nearest_index_{width}"]]
    out = {}
    for name, W_dec in candidates.items():
        fitted = refit_encoder(W_dec, rows, meta.cfg.k, steps, batch_size, seed=seed)
        out[name] = fraction_of_variance_explained(rows, decompose(fitted, rows)[1])
    return out


def write_meta_analysis(analysis: MetaAnalysis, directory: str | os.PathLike) -> Path:
    """Write ``analysis.safetensors`` then ``analysis.json`` (atomically) into ``directory``; returns the JSON path."""
    return write_results(directory, ANALYSIS_NAME, analysis.summary, analysis.arrays, META_ANALYSIS)


def read_meta_analysis(path: str | os.PathLike, arrays: bool = False) -> dict[str, Any]:
    """The summary of ``analysis.json`` (a file or its folder); ``arrays=True`` adds the tensors under ``"arrays"``
    and the decomposition as a :class:`MetaDecomposition` under ``"decomposition"``."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{ANALYSIS_NAME}.json"
    summary = read_results(path, META_ANALYSIS, arrays)
    if arrays:
        tensors = summary["arrays"]
        try:
            summary["decomposition"] = MetaDecomposition(tensors["decomposition_base"], tensors["decomposition_meta"],
                                                         tensors["decomposition_value"], int(summary["n_base"]),
                                                         int(summary["n_meta"]))
        except STRUCTURAL_ERRORS as err:
            raise MetaSAEError(f"the arrays of {path} are missing or corrupt ({err}); {META_ANALYSIS.rebuild}") from err
        d = summary["decomposition"]
        n = d.base.shape[0] if d.base.dim() == 1 else -1
        ok = (n >= 0 and d.meta.shape == (n,) and d.value.shape == (n,) and not d.base.is_floating_point()
              and not d.meta.is_floating_point() and d.n_base > 0 and d.n_meta > 0
              and (n == 0 or (0 <= int(d.base.min()) and int(d.base.max()) < d.n_base
                              and 0 <= int(d.meta.min()) and int(d.meta.max()) < d.n_meta)))
        if not ok:
            raise MetaSAEError(f"the decomposition in {path} is inconsistent (shapes {tuple(d.base.shape)}, "
                               f"{tuple(d.meta.shape)}, {tuple(d.value.shape)} for {d.n_base} latents and {d.n_meta} "
                               f"meta-latents); {META_ANALYSIS.rebuild}")
    return summary
