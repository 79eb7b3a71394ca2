"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders"; SAELens
``gated``, dictionary_learning ``GatedAutoEncoder``).

Which latents fire and how strongly are decided by two paths that share ``W_enc``:

    π_gate = (x - b_dec) @ W_enc + b_gate                         [batch, d_sae]
    π_mag  = (x - b_dec) @ (W_enc * exp(r_mag)) + b_mag           [batch, d_sae]
    f      = 1[π_gate > 0] * relu(π_mag)

Training minimises ``MSE(x̂, x) + λ·‖relu(π_gate)‖₁ / d_in + MSE(relu(π_gate) @ sg(W_dec) + sg(b_dec), x)`` (the
auxiliary loss gives the gate a reconstruction signal through the frozen decoder; decoder rows are unit norm, so the
L1 needs no norm weighting). Everything about the architecture — its tensors ``b_gate``, ``r_mag``, ``b_mag``, its
inference rule, losses, FLOPs, how a subset of its latents is taken apart and rebased, its SAELens name — lives in
this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from canon_pl.checks import check_counts
from canon_pl.sae.base import SparseAutoencoder, TrainStepOutput
from canon_pl.sae.config import SAEConfigError, SAESettings


@dataclass(frozen=True)
class GatedSettings(SAESettings):
    """A gated SAE: a gate path decides which latents fire, a magnitude path (sharing ``W_enc``) how strongly."""

    architecture = "gated"
    training_only = ("l1_warmup_steps",)
    default_aux_coefficient = 0.0
    default_kernel = "dense"
    """Gated SAEs train with the plain formula (the gate's L1 and auxiliary loss read every gate pre-activation)."""
    l1_coefficient: float = 5.0
    """Weight λ of the L1 penalty on ``relu(π_gate)``."""
    l1_warmup_steps: int = 0
    """Steps over which λ rises linearly from 0 (0 = full weight from the first step)."""

    def validate(self) -> None:
        super().validate()
        check_counts(0, l1_warmup_steps=self.l1_warmup_steps)
        if self.kernel not in (None, "dense"):
            raise SAEConfigError(f"a gated SAE trains with kernel 'dense', got {self.kernel!r}")
        if self.aux_coefficient not in (None, 0, 0.0):
            raise SAEConfigError("a gated SAE has its own auxiliary loss (the gate through the frozen decoder); "
                                 "AuxK does not apply: leave aux_coefficient unset")
        if not self.l1_coefficient >= 0:
            raise SAEConfigError(f"l1_coefficient must be >= 0, got {self.l1_coefficient}")

    def describe(self) -> str:
        return f"gated (L1 coefficient {self.l1_coefficient})"


class GatedSAE(SparseAutoencoder):
    """``f = 1[π_gate > 0] * relu(π_mag)``; tensors ``W_enc [d_in, d_sae]``, ``b_gate``, ``r_mag``, ``b_mag``
    ``[d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``."""

    architecture = "gated"
    saelens_architecture = "gated"
    latent_axes = {"W_enc": 1, "b_gate": 0, "r_mag": 0, "b_mag": 0, "W_dec": 0, "tokens_since_fired": 0}
    input_scaled = ("b_gate", "b_mag", "b_dec")

    def init_encoder_state(self) -> None:
        d_sae = self.cfg.d_sae
        self.b_gate = nn.Parameter(torch.zeros(d_sae))
        self.r_mag = nn.Parameter(torch.zeros(d_sae))
        self.b_mag = nn.Parameter(torch.zeros(d_sae))

    def __init__(self, cfg: object) -> None:
        super().__init__(cfg)
        self.threshold_initialized.fill_(True)  # no running statistic: ready for inference from the start

    def training_scalars(self) -> dict[str, Tensor]:
        """The magnitude path's mean scale ``exp(r_mag)`` (no threshold)."""
        return {"magnitude_scale": self.r_mag.detach().exp().mean()}

    def magnitude_weights(self) -> Tensor:
        """``W_enc * exp(r_mag)`` ``[d_in, d_sae]``."""
        return self.W_enc * self.r_mag.exp()

    def gate_and_magnitude(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(π_gate, π_mag)``, each ``[batch, d_sae]``, of an input already normalised ``[batch, d_in]`` (``b_dec``
        folded into the biases, so the backward pass forms no gradient through ``x``)."""
        W_mag = self.magnitude_weights()
        gate = torch.addmm(self.b_gate - self.b_dec @ self.W_enc, x, self.W_enc)
        magnitude = torch.addmm(self.b_mag - self.b_dec @ W_mag, x, W_mag)
        return gate, magnitude

    def _pre_activations(self, x: Tensor) -> Tensor:
        """The activations themselves (non-negative, dense) ``[batch, d_sae]``: :meth:`select` keeps them all."""
        gate, magnitude = self.gate_and_magnitude(x)
        return (gate > 0) * torch.relu(magnitude)

    def select(self, pre: Tensor, inference: bool) -> Tensor:
        return pre

    def training_forward(self, x: Tensor, sparsity_scale: float = 1.0) -> TrainStepOutput:
        """Loss of one batch ``x [batch, d_in]``: MSE + λ·L1 of the gate (times ``sparsity_scale``) + the gate's
        reconstruction through the frozen decoder."""
        self.check_trainable()
        gate, magnitude = self.gate_and_magnitude(x)
        acts = (gate > 0) * torch.relu(magnitude)
        x_hat = self.decode(acts)
        gate_acts = torch.relu(gate)
        l1 = self.cfg.l1_coefficient
        losses = {"mse": F.mse_loss(x_hat, x),
                  "l1": sparsity_scale * l1 * gate_acts.sum(dim=-1).mean() / self.d_in,
                  "aux": F.mse_loss(gate_acts @ self.W_dec.detach() + self.b_dec.detach(), x)}
        with torch.no_grad():
            self._update_dead_counters(acts, x.shape[0])
        loss = torch.stack(list(losses.values())).sum()
        return TrainStepOutput(loss=loss, losses=losses, x_hat=x_hat.detach(), acts=acts.detach(), d_sae=self.d_sae)

    def training_flops(self, batch: int, active_per_token: float) -> int:
        """Dense: the gate and magnitude products with their weight gradients (``8·B·d·n``), the decode with its two
        gradients (``6·B·d·n``), the auxiliary decode and its input gradient (``4·B·d·n``)."""
        return 18 * batch * self.d_in * self.d_sae

    @torch.no_grad()
    def rebase_decoder_bias(self, b_dec: Tensor) -> None:
        """Fold the change of ``b_dec`` into both paths' biases: ``π_gate`` and ``π_mag`` unchanged for every input."""
        shift = b_dec - self.b_dec
        self.b_mag.add_(shift @ self.magnitude_weights())
        self.b_gate.add_(shift @ self.W_enc)
        self.b_dec.copy_(b_dec)



__all__ = ["GatedSAE", "GatedSettings"]
