"""``StitchedSAE``: a plain SAE whose latents are a subset of S ∪ L (docs/design.md 1.2, step 4).

Every latent keeps the exact activation it has in its source SAE. The stitched SAE has one decoder bias (S's or
L's); a latent from the other source gets the bias difference folded into its encoder bias,
``b_enc'[j] = b_enc[j] + W_enc[:, j] · (b_dec_chosen - b_dec_source)``, and carries its own threshold.
That needs latents that fire independently of each other: BatchTopK at inference (one global threshold θ), ReLU
(θ = 0) or per-latent thresholds. TopK picks k latents per token jointly, so its latents cannot be moved.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from canon_pl.sae import SparseAutoencoder
from canon_pl.stitching.matching import StitchingError


def latent_thresholds(sae: SparseAutoencoder) -> Tensor:
    """``[d_sae]`` threshold each latent's pre-activation must exceed at inference (0 for ReLU)."""
    arch = sae.cfg.architecture
    if arch == "relu":
        return torch.zeros(sae.d_sae, device=sae.W_dec.device)
    if arch == "topk":
        raise StitchingError(
            f"a TopK SAE ({sae.d_sae} latents) picks k latents per token jointly, so one latent's activation depends "
            f"on the others and cannot be moved into another SAE; stitch BatchTopK (inference threshold), ReLU or "
            f"JumpReLU SAEs"
        )
    if not bool(sae.threshold_initialized):
        raise StitchingError(
            f"the {arch} SAE with {sae.d_sae} latents has no inference threshold yet (it was never trained): "
            f"stitch trained SAEs"
        )
    return sae.threshold.detach().expand(sae.d_sae).clone()


class StitchedSAE(nn.Module):
    """Latents ``[n]`` drawn from two SAEs, each computing its source's exact activation.

    W_enc: ``[d_in, n]``, b_enc: ``[n]`` (bias difference folded in), threshold: ``[n]``, W_dec: ``[n, d_in]``,
    b_dec: ``[d_in]``; ``from_large``: ``[n]`` bool, ``source_index``: ``[n]`` index in the source SAE.
    """

    def __init__(self, W_enc: Tensor, b_enc: Tensor, threshold: Tensor, W_dec: Tensor, b_dec: Tensor,
                 from_large: Tensor, source_index: Tensor) -> None:
        super().__init__()
        self.register_buffer("W_enc", W_enc)
        self.register_buffer("b_enc", b_enc)
        self.register_buffer("threshold", threshold)
        self.register_buffer("W_dec", W_dec)
        self.register_buffer("b_dec", b_dec)
        self.register_buffer("from_large", from_large)
        self.register_buffer("source_index", source_index)

    @classmethod
    @torch.no_grad()
    def from_pair(cls, small: SparseAutoencoder, large: SparseAutoencoder, keep_small: Tensor, keep_large: Tensor,
                  decoder_bias: str = "small") -> StitchedSAE:
        """The S-latents where ``keep_small [d_small]`` is true, then the L-latents where ``keep_large [d_large]``
        is; the decoder bias is S's (``decoder_bias="small"``) or L's."""
        if decoder_bias not in ("small", "large"):
            raise ValueError(f"decoder_bias must be 'small' or 'large', got {decoder_bias!r}")
        b_dec = (small if decoder_bias == "small" else large).b_dec.detach()
        parts = []
        for sae, keep in ((small, keep_small), (large, keep_large)):
            idx = torch.nonzero(keep.to(sae.W_dec.device), as_tuple=True)[0]
            W_enc = sae.W_enc.detach()[:, idx]
            b_enc = sae.b_enc.detach()[idx] + (b_dec - sae.b_dec.detach()) @ W_enc
            parts.append((W_enc, b_enc, latent_thresholds(sae)[idx], sae.W_dec.detach()[idx], idx))
        (We_s, be_s, th_s, Wd_s, i_s), (We_l, be_l, th_l, Wd_l, i_l) = parts
        from_large = torch.cat([torch.zeros_like(i_s, dtype=torch.bool), torch.ones_like(i_l, dtype=torch.bool)])
        return cls(torch.cat([We_s, We_l], dim=1), torch.cat([be_s, be_l]), torch.cat([th_s, th_l]),
                   torch.cat([Wd_s, Wd_l]), b_dec.clone(), from_large, torch.cat([i_s, i_l]))

    @property
    def d_sae(self) -> int:
        return self.W_dec.shape[0]

    def encode(self, x: Tensor) -> Tensor:
        """x: ``[batch, d_in]`` -> ``[batch, n]``: ``pre * (pre > threshold)`` with
        ``pre = relu((x - b_dec) W_enc + b_enc)``."""
        pre = torch.relu(torch.addmm(self.b_enc - self.b_dec @ self.W_enc, x, self.W_enc))
        return pre * (pre > self.threshold)

    def decode(self, acts: Tensor) -> Tensor:
        """acts: ``[batch, n]`` -> ``[batch, d_in]``."""
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction ``[batch, d_in]`` of raw activations ``[batch, d_in]``."""
        return self.decode(self.encode(x))
