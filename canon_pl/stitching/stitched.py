"""``StitchedSAE``: a plain SAE whose latents are a subset of S ∪ L (docs/design.md 1.2, step 4).

Every latent keeps the exact activation it has in its source SAE. The stitched SAE has one decoder bias (S's or
L's); a latent from the other source gets the bias difference folded into its encoder bias,
``b_enc'[j] = b_enc[j] + W_enc[:, j] · (b_dec_chosen - b_dec_source)``, and carries its own threshold.
That needs latents that fire independently of each other (``SparseAutoencoder.latents_independent``): BatchTopK at
inference (one global threshold θ), ReLU (θ = 0), per-latent thresholds, gated. TopK picks k latents per token
jointly, so its latents cannot be moved. Each architecture takes its own latents apart
(``SparseAutoencoder.latent_subset``), so stitching needs no knowledge of any.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from canon_pl.sae import SparseAutoencoder
from canon_pl.metrics.matching import StitchingError


def check_stitchable(sae: SparseAutoencoder) -> None:
    """Raise :class:`StitchingError` for an SAE whose latents cannot be moved into another SAE (TopK's joint choice)
    or that cannot run inference yet (a BatchTopK SAE never trained has no threshold)."""
    if not sae.latents_independent:
        raise StitchingError(
            f"a {sae.architecture} SAE ({sae.d_sae} latents) picks its latents per token jointly, so one latent's "
            f"activation depends on the others and cannot be moved into another SAE; stitch SAEs whose latents fire "
            f"on their own (BatchTopK at inference, ReLU, JumpReLU, gated)"
        )
    if not sae.inference_ready():
        raise StitchingError(
            f"the {sae.architecture} SAE with {sae.d_sae} latents has no inference threshold yet (it was never "
            f"trained): stitch trained SAEs"
        )


class StitchedSAE(nn.Module):
    """Latents ``[n]`` drawn from two SAEs, each computing its source's exact activation.

    ``parts``: the S-latents, then the L-latents, each an SAE of its source's architecture holding only those latents
    (:meth:`SparseAutoencoder.latent_subset`), rebased on the stitched decoder bias; W_dec: ``[n, d_in]``,
    b_dec: ``[d_in]``; ``from_large``: ``[n]`` bool, ``source_index``: ``[n]`` index in the source SAE.
    """

    def __init__(self, parts: list[SparseAutoencoder], W_dec: Tensor, b_dec: Tensor, from_large: Tensor,
                 source_index: Tensor) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
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
        parts, rows, sources = [], [], []
        for sae, keep in ((small, keep_small), (large, keep_large)):
            check_stitchable(sae)
            idx = torch.nonzero(keep.to(sae.W_dec.device), as_tuple=True)[0]
            if idx.numel():
                parts.append(sae.latent_subset(idx, b_dec))
            rows.append(sae.W_dec.detach()[idx])
            sources.append(idx)
        i_s, i_l = sources
        from_large = torch.cat([torch.zeros_like(i_s, dtype=torch.bool), torch.ones_like(i_l, dtype=torch.bool)])
        return cls(parts, torch.cat(rows), b_dec.clone(), from_large, torch.cat(sources))

    @property
    def d_sae(self) -> int:
        return self.W_dec.shape[0]

    @property
    def b_enc(self) -> Tensor:
        """``[n]`` encoder biases with the decoder-bias difference folded in (parts with a ``b_enc``)."""
        return torch.cat([part.b_enc for part in self.parts])

    def encode(self, x: Tensor) -> Tensor:
        """x: ``[batch, d_in]`` -> ``[batch, n]``: each part's inference activations (``b_dec`` subtracted)."""
        if not len(self.parts):
            return x.new_zeros(x.shape[0], 0)
        return torch.cat([part.encode(x, inference=True) for part in self.parts], dim=-1)

    def decode(self, acts: Tensor) -> Tensor:
        """acts: ``[batch, n]`` -> ``[batch, d_in]``."""
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction ``[batch, d_in]`` of raw activations ``[batch, d_in]``."""
        return self.decode(self.encode(x))
