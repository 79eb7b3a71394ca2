"""JumpReLU SAE (Rajamanoharan et al. 2024; Gemma Scope, SAELens ``jumprelu``): each latent fires when its
pre-activation exceeds its own threshold, ``f = pre * H(pre - θ)``, strictly.

Training follows the paper, with what the peers' trackers learned built in:

- θ ``[d_sae]`` is a float32 parameter in the units of the input, not a log-threshold (Adam's steps on ``log θ`` are
  relative, so a threshold near zero barely moves), and it stays float32 when the module is cast to bf16 (a bf16
  threshold rounds the cut by up to 0.4%);
- the Heaviside step has no gradient, so θ learns through a straight-through estimator: the derivative of
  ``H(p - θ)`` in θ is ``-K((p - θ) / ε) / ε`` with the rectangle kernel ``K`` and bandwidth ``ε``;
- the sparsity loss is the L0 itself (``l0``: ``l0_coefficient · L0``) or its distance to a target
  (``target_l0``: ``l0_coefficient · (L0 / target_l0 - 1)²``), so the L0 moves to a number a researcher chooses;
- θ is kept ≥ 0 after each optimizer step (a negative θ lets nothing more through than 0, and would stall);
- the step is sparse by default: only the pre-activations above ``θ - ε/2`` (those that fire and those θ's estimator
  reads) enter the graph, through the TopK family's sparse gather (:mod:`canon_pl.sae.sparse_grad`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from canon_pl.sae.base import SparseActivations, SparseAutoencoder, TrainStepOutput
from canon_pl.sae.batchtopk import threshold_select
from canon_pl.sae.config import SAEConfigError, SAESettings
from canon_pl.sae.flops import dense_step_flops
from canon_pl.sae.sparse_grad import gather_pre_activations

SPARSITY_LOSSES = ("l0", "target_l0")
SPARSE_STEP_MAX_FRACTION = 0.05
"""The sparse kernel takes the plain formula's step while more than this share of the pre-activations lie above
θ - ε/2: at the initial θ half of them do, and gathering them is slower than the dense step (d_sae 9216, batch 4096,
2 CPU cores: 0.25× the dense step's speed at 50%, 4.5× at L0 = 32, even near 9%; benchmarks/RESULTS.md)."""


@dataclass(frozen=True)
class JumpReLUSettings(SAESettings):
    """A JumpReLU SAE: per-latent thresholds learned through a straight-through estimator."""

    architecture = "jumprelu"
    default_aux_coefficient = 0.0  # the JumpReLU paper trains without AuxK
    default_kernel = "sparse"
    """``sparse`` (the default) takes only the pre-activations above ``θ - ε/2`` into the graph (those that fire, and
    those just below θ that θ's estimator reads): the plain formula's loss and gradients at 4.5× its speed once L0 is
    near its target, the plain formula itself while many pre-activations lie there (:data:`SPARSE_STEP_MAX_FRACTION`);
    ``dense`` is the plain formula throughout."""
    initial_threshold: float = 0.001
    """θ of every latent at initialisation, in the units of the (scaled) training activations."""
    bandwidth: float = 0.01
    """ε, the width of the rectangle kernel of θ's straight-through estimator. Only pre-activations within ε/2 of θ
    move it: with 0.001 (Gemma Scope's, for batches of 4096 over 100k+ steps) most latents see none in a batch of
    512 and L0 crawls (255 -> 36 in 150 steps on SmolLM2 vs 255 -> 25 with 0.01)."""
    sparsity_loss: str = "target_l0"
    """``target_l0`` (``l0_coefficient · (L0 / target_l0 - 1)²``: L0 goes where you say) or ``l0``
    (``l0_coefficient · L0``, the paper's: L0 settles where the penalty balances the reconstruction)."""
    l0_coefficient: float = 1.0
    """Weight of the sparsity loss (for ``l0``, of the order of 1e-3 against canon-pl's per-element MSE)."""
    target_l0: float | None = 32.0
    """Active latents per token the ``target_l0`` loss aims at (32: BatchTopK's default k)."""
    threshold_lr_scale: float = 100.0
    """θ's learning rate in multiples of the SAE's. Adam moves a parameter by about its learning rate per step
    whatever the gradient, and θ lives on the scale of the pre-activations (order 1), not of the weights (order
    ``1/sqrt(d_in)``): at the weights' rate θ needs thousands of steps to leave its start, and L0 does not move."""

    def validate(self) -> None:
        super().validate()
        for name in ("initial_threshold", "bandwidth", "l0_coefficient", "threshold_lr_scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (
                    name == "bandwidth" and value == 0):
                raise SAEConfigError(f"{name} must be a finite number >= 0 (bandwidth > 0), got {value!r}")
        if self.sparsity_loss not in SPARSITY_LOSSES:
            raise SAEConfigError(f"sparsity_loss must be one of {', '.join(SPARSITY_LOSSES)}, got "
                                 f"{self.sparsity_loss!r}")
        target = self.target_l0
        if self.sparsity_loss == "target_l0" and not (isinstance(target, (int, float)) and math.isfinite(target)
                                                      and target > 0):
            raise SAEConfigError(f"sparsity_loss 'target_l0' needs target_l0 > 0 (active latents per token), got "
                                 f"{target!r}")

    def describe(self) -> str:
        if self.sparsity_loss == "target_l0":
            return f"JumpReLU (target L0 {self.target_l0})"
        return f"JumpReLU (L0 coefficient {self.l0_coefficient})"


def _to_threshold(grad: Tensor, threshold: Tensor) -> Tensor:
    """A gradient the shape of ``pre`` summed to ``threshold``'s: over the batch for ``θ [d_sae]`` against ``pre
    [batch, d_sae]``; as it is for one threshold per entry (the sparse kernel's ``θ[cols] [n]`` against ``[n]``)."""
    return grad if grad.shape == threshold.shape else grad.sum(dim=0)


class _JumpReLU(torch.autograd.Function):
    """``pre * H(pre - θ)``; θ's gradient through the rectangle kernel of bandwidth ε."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        window = ((pre - threshold).abs() < eps / 2).to(grad.dtype)
        grad_threshold = -(threshold / eps) * _to_threshold(window * grad, threshold)
        return grad * (pre > threshold), grad_threshold, None


class _Step(torch.autograd.Function):
    """``H(pre - θ)``; no gradient to ``pre``, θ's through the rectangle kernel of bandwidth ε."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        window = ((pre - threshold).abs() < eps / 2).to(grad.dtype)
        return None, -_to_threshold(window * grad, threshold) / eps, None


class JumpReLUSAE(SparseAutoencoder):
    """Per-latent thresholds ``threshold [d_sae]``; the same selection in training and inference."""

    architecture = "jumprelu"
    saelens_architecture = "jumprelu"
    latent_axes = {**SparseAutoencoder.latent_axes, "threshold": 0}

    def init_encoder_state(self) -> None:
        super().init_encoder_state()
        del self.threshold
        self.threshold = nn.Parameter(torch.full((self.cfg.d_sae,), float(self.cfg.initial_threshold)))

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.threshold_initialized.fill_(True)

    def _apply(self, fn: Any, recurse: bool = True) -> JumpReLUSAE:
        """Casts (``.to(torch.bfloat16)``, ``.half()``) leave θ in float32."""
        super()._apply(fn, recurse)
        if self.threshold.is_floating_point() and self.threshold.dtype != torch.float32:
            self.threshold.data = self.threshold.data.float()
        return self

    def select(self, pre: Tensor, inference: bool) -> SparseActivations:
        """pre: ``relu`` of the pre-activation ``[batch, d_sae]``. A negative θ lets nothing more through than θ = 0
        (``relu(p) = 0`` there), so it is clamped for the count of active latents to match."""
        return threshold_select(pre, self.threshold.detach().clamp_min(0.0))

    def param_groups(self, lr: float) -> list[dict[str, object]]:
        """θ at ``threshold_lr_scale`` times the rate of the other parameters."""
        scale = float(self.cfg.threshold_lr_scale)
        others = [p for name, p in self.named_parameters() if name != "threshold"]
        return [{"params": others, "lr": lr}, {"params": [self.threshold], "lr": lr * scale}]

    @property
    def bandwidth(self) -> float:
        return float(self.cfg.bandwidth)

    def training_forward(self, x: Tensor, sparsity_scale: float = 1.0) -> TrainStepOutput:
        """Loss for one batch ``x [batch, d_in]``: MSE + the sparsity loss (scaled by ``sparsity_scale``) + AuxK when
        its weight is set; θ learns through :class:`_JumpReLU` and :class:`_Step`, comparing in float32."""
        self.check_trainable()
        step = self._sparse_step(x) if self.cfg.kernel == "sparse" else None
        acts, x_hat, l0, pre, take = step or self._dense_step(x)
        coefficient = float(self.cfg.l0_coefficient)
        if self.cfg.sparsity_loss == "target_l0":
            sparsity = coefficient * (l0 / float(self.cfg.target_l0) - 1.0) ** 2
        else:
            sparsity = coefficient * l0
        losses: dict[str, Tensor] = {"mse": F.mse_loss(x_hat, x), "l0": sparsity_scale * sparsity}
        with torch.no_grad():
            self._update_dead_counters(acts, x.shape[0])
        if self.cfg.aux_coefficient > 0:
            losses["auxk"] = self.cfg.aux_coefficient * self.auxk_loss(pre.relu(), take, x, x_hat)
        loss = torch.stack(list(losses.values())).sum()
        return TrainStepOutput(loss=loss, losses=losses, x_hat=x_hat.detach(), acts=acts, d_sae=self.d_sae)

    def _dense_step(self, x: Tensor):
        """``(acts [batch, d_sae] detached, x_hat [batch, d_in], l0, pre [batch, d_sae] detached, take)``: the plain
        formula, every pre-activation in the graph."""
        pre = torch.addmm(self.encoder_bias(), x, self.W_enc).float()  # [batch, d_sae]
        acts = _JumpReLU.apply(pre, self.threshold, self.bandwidth).to(x.dtype)
        l0 = _Step.apply(pre, self.threshold, self.bandwidth).sum(dim=-1).mean()
        relu_pre = pre.relu()
        return acts.detach(), self.decode(acts), l0, pre.detach(), lambda rows, cols: relu_pre[rows, cols]

    def _sparse_step(self, x: Tensor):
        """The same as :meth:`_dense_step` (acts as :class:`SparseActivations` of the latents that fire) with only
        the ``n`` pre-activations above ``θ - ε/2`` in the graph: those that fire and those θ's estimator reads;
        ``None`` when more than :data:`SPARSE_STEP_MAX_FRACTION` of them are (early in training), where the plain
        formula is faster."""
        bias = self.encoder_bias()
        with torch.no_grad():
            pre_x = torch.addmm(bias, x, self.W_enc)  # [batch, d_sae], no graph
            pre = pre_x.float()
            inside = pre > self.threshold.detach() - self.bandwidth / 2
            if float(inside.float().mean()) > SPARSE_STEP_MAX_FRACTION:
                return None
            rows, cols = torch.nonzero(inside, as_tuple=True)
        values = gather_pre_activations(x, self.W_enc, bias, pre_x, rows, cols).float()  # [n]
        threshold = self.threshold[cols]  # [n], its gradient scattered back to θ [d_sae]
        fired = _JumpReLU.apply(values, threshold, self.bandwidth)  # [n], 0 below θ
        batch = x.shape[0]
        x_hat = self.decode_sparse(SparseActivations(rows, cols, fired.to(x.dtype), batch))
        l0 = _Step.apply(values, threshold, self.bandwidth).sum() / batch
        keep = fired.detach() > 0
        acts = SparseActivations(rows[keep], cols[keep], fired.detach()[keep].to(x.dtype), batch)
        return acts, x_hat, l0, pre, lambda r, c: gather_pre_activations(x, self.W_enc, bias, pre_x, r, c)

    def training_flops(self, batch: int, active_per_token: float) -> int:
        """Dense throughout with the plain formula (:func:`canon_pl.sae.flops.dense_step_flops`); the sparse kernel's
        count otherwise."""
        if self.cfg.kernel == "dense":
            return dense_step_flops(batch, self.d_in, self.d_sae)
        return super().training_flops(batch, active_per_token)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Unit-norm decoder rows, and θ ≥ 0."""
        super().after_optimizer_step()
        self.threshold.clamp_(min=0.0)
