"""SAEBench's core metrics on held-out activations and on the weights (docs/design.md 1.4, "core metrics").

The same quantities, under the same names, as SAEBench's ``core`` evaluation (which takes them from SAELens's
``run_evals``), so a researcher can put a canon-pl SAE's figures beside theirs:

- reconstruction quality: ``explained_variance`` (1 − FVU, FVU as :class:`FractionOfVarianceUnexplained`: the
  residual's summed variance over the activations' summed variance about their per-dimension mean), ``mse`` (the mean
  squared error per element) and ``cossim`` (the mean cosine between a token's activation and its reconstruction);
- shrinkage: ``l2_norm_in`` / ``l2_norm_out`` (mean token norms), ``l2_ratio`` (the mean of ‖x̂‖ / ‖x‖ per token) and
  ``relative_reconstruction_bias`` (mean ‖x̂‖² / mean x·x̂: Rajamanoharan et al. 2024, arXiv 2404.16014, eq. 10; 1 when
  the reconstruction is unbiased in scale, below 1 when it shrinks);
- sparsity: ``l0`` and ``l1`` (mean count and mean summed magnitude of the active latents per token);
- misc: ``frac_alive`` (latents that fired on at least one evaluated token), ``freq_over_1_percent`` /
  ``freq_over_10_percent`` (the fraction of latents firing on more than 1 % / 10 % of tokens), their
  ``normalized_`` versions (the share of all firings those latents take), and from the weights
  ``average_max_encoder_cosine_sim`` / ``average_max_decoder_cosine_sim`` (each latent's highest cosine to another
  latent's encoder column / decoder row, averaged) and ``encoder_decoder_cosine_sim`` per latent.

Every sum is float64 and reduced across ranks by torchmetrics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from canon_pl.metrics.reconstruction import FractionOfVarianceUnexplained


class CoreMetrics(Metric):
    """Reconstruction, shrinkage, sparsity and firing figures of one SAE over every token it is updated with."""

    full_state_update = False
    is_differentiable = False

    def __init__(self, d_sae: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fvu = FractionOfVarianceUnexplained()
        for name in ("n_tokens", "n_elements", "squared_error", "cossim", "norm_in", "norm_out", "l2_ratio",
                     "norm_out_squared", "dot", "l0", "l1"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("fire_count", torch.zeros(d_sae, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x: Tensor, x_hat: Tensor, feature_acts: Tensor) -> None:
        """x, x_hat: ``[batch, d_in]`` (activations and their reconstruction); feature_acts: ``[batch, d_sae]``."""
        if x.shape != x_hat.shape or feature_acts.shape[0] != x.shape[0]:
            raise ValueError(f"x {tuple(x.shape)}, x_hat {tuple(x_hat.shape)} and feature_acts "
                             f"{tuple(feature_acts.shape)} must describe the same tokens")
        self.fvu.update(x_hat, x)
        x, x_hat, acts = x.detach().double(), x_hat.detach().double(), feature_acts.detach()
        norm_in, norm_out = x.norm(dim=-1), x_hat.norm(dim=-1)
        dot = (x * x_hat).sum(dim=-1)
        self.n_tokens += x.shape[0]
        self.n_elements += x.numel()
        self.squared_error += (x - x_hat).pow(2).sum()
        self.cossim += (dot / (norm_in * norm_out).clamp_min(1e-12)).sum()
        self.norm_in += norm_in.sum()
        self.norm_out += norm_out.sum()
        self.l2_ratio += (norm_out / norm_in.clamp_min(1e-12)).sum()
        self.norm_out_squared += norm_out.pow(2).sum()
        self.dot += dot.sum()
        active = acts != 0  # [batch, d_sae] kept in its own dtype: a float64 copy of a wide code would be huge
        self.l0 += active.sum()
        self.l1 += acts.abs().sum(dtype=torch.float64)
        self.fire_count += active.sum(dim=0)

    def compute(self) -> dict[str, dict[str, float]]:
        """SAEBench's categories (``reconstruction_quality``, ``shrinkage``, ``sparsity``, ``misc_metrics``,
        ``token_stats``) with their field names."""
        n = float(self.n_tokens.clamp_min(1))
        density = self.fire_count / n
        total = float(density.sum()) or 1.0
        return {
            "reconstruction_quality": {"explained_variance": 1.0 - float(self.fvu.compute()),
                                       "mse": float(self.squared_error / self.n_elements.clamp_min(1)),
                                       "cossim": float(self.cossim) / n},
            "shrinkage": {"l2_norm_in": float(self.norm_in) / n, "l2_norm_out": float(self.norm_out) / n,
                          "l2_ratio": float(self.l2_ratio) / n,
                          "relative_reconstruction_bias": float(self.norm_out_squared / self.dot)},
            "sparsity": {"l0": float(self.l0) / n, "l1": float(self.l1) / n},
            "misc_metrics": {"frac_alive": float((density > 0).double().mean()),
                             "freq_over_1_percent": float((density > 0.01).double().mean()),
                             "freq_over_10_percent": float((density > 0.1).double().mean()),
                             "normalized_freq_over_1_percent": float(density[density > 0.01].sum()) / total,
                             "normalized_freq_over_10_percent": float(density[density > 0.1].sum()) / total},
            "token_stats": {"total_tokens_eval_reconstruction": int(n), "total_tokens_eval_sparsity_variance": int(n)},
        }

    def densities(self) -> Tensor:
        """``[d_sae]``: the fraction of evaluated tokens each latent fired on."""
        return (self.fire_count / self.n_tokens.clamp_min(1)).float()


@torch.no_grad()
def max_cosine_to_others(rows: Tensor, chunk: int = 2048) -> Tensor:
    """``[n]``: each row's highest cosine to any *other* row of ``rows [n, d]``, in chunks of ``chunk`` rows (memory
    ``chunk x n``, not ``n x n``)."""
    unit = F.normalize(rows.float(), dim=-1)
    out = torch.empty(unit.shape[0], device=unit.device)
    for start in range(0, unit.shape[0], chunk):
        cos = unit[start:start + chunk] @ unit.T
        cos[torch.arange(cos.shape[0], device=cos.device), torch.arange(start, start + cos.shape[0],
                                                                       device=cos.device)] = -2.0
        out[start:start + chunk] = cos.max(dim=-1).values
    return out


@torch.no_grad()
def weight_metrics(W_enc: Tensor, W_dec: Tensor) -> dict[str, Tensor]:
    """Per latent, from the weights alone: ``encoder_decoder_cosine_sim`` (the cosine between latent ``j``'s encoder
    column ``W_enc[:, j]`` and its decoder row ``W_dec[j]``), ``max_encoder_cosine_sim`` and
    ``max_decoder_cosine_sim`` (its highest cosine to another latent's), and ``encoder_norm``; each ``[d_sae]``.
    W_enc: ``[d_in, d_sae]``; W_dec: ``[d_sae, d_in]``."""
    if W_enc.shape[::-1] != W_dec.shape:
        raise ValueError(f"W_enc {tuple(W_enc.shape)} must be W_dec {tuple(W_dec.shape)} transposed")
    encoder = W_enc.T.float()
    return {"encoder_decoder_cosine_sim": F.cosine_similarity(encoder, W_dec.float(), dim=-1),
            "max_encoder_cosine_sim": max_cosine_to_others(encoder),
            "max_decoder_cosine_sim": max_cosine_to_others(W_dec),
            "encoder_norm": encoder.norm(dim=-1)}


__all__ = ["CoreMetrics", "max_cosine_to_others", "weight_metrics"]
