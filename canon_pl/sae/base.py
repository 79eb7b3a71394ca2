"""The sparse autoencoder shared by every architecture (docs/design.md 1.1).

Weights use one orientation everywhere: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]`` (rows are latent
directions, unit norm). Subclasses decide which pre-activations survive (:meth:`select`); everything else —
decoding, losses, AuxK, dead-latent tracking, folding the activation scale — lives here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import register_dataclass

from canon_pl.distributed import fired_anywhere
from canon_pl.sae.config import SAE_CLASSES, SAEConfig, SAEConfigError
from canon_pl.sae.flops import dense_encoder_flops, sparse_kernel_flops
from canon_pl.sae.sparse_grad import gather_pre_activations


@dataclass
class SparseActivations:
    """The non-zero latent activations of a batch, in row-major order.

    rows: ``[n]`` token index of each non-zero (non-decreasing); cols: ``[n]`` latent index; values: ``[n]`` > 0.
    """

    rows: Tensor
    cols: Tensor
    values: Tensor
    batch_size: int

    def to_dense(self, d_sae: int) -> Tensor:
        """``[batch, d_sae]`` tensor, differentiable with respect to ``values``."""
        dense = self.values.new_zeros(self.batch_size, d_sae)
        return dense.index_put((self.rows, self.cols), self.values)


@dataclass
class TrainStepOutput:
    """What one training forward produces: the loss to minimise, its parts, and the batch's activations
    (``acts``: sparse for the TopK family, a dense ``[batch, d_sae]`` tensor otherwise; detached)."""

    loss: Tensor
    losses: dict[str, Tensor]
    x_hat: Tensor  # [batch, d_in], detached
    acts: SparseActivations | Tensor
    d_sae: int

    @property
    def feature_acts(self) -> Tensor:
        """``[batch, d_sae]`` dense activations (built on demand: a full pass over ``batch × d_sae``)."""
        return self.acts.to_dense(self.d_sae) if isinstance(self.acts, SparseActivations) else self.acts

    @property
    def l0(self) -> Tensor:
        """Mean number of active latents per token."""
        if isinstance(self.acts, SparseActivations):
            return torch.tensor(self.acts.values.numel() / max(self.acts.batch_size, 1))
        return (self.acts != 0).sum(dim=-1).float().mean()


# A pytree node, so that FSDP2 finds the loss inside a ``training_forward`` output and hooks its backward.
register_dataclass(TrainStepOutput)

LAYER_NORM_EPS = 1e-5
"""SAELens's ``layer_norm`` input normalisation divides by ``std + 1e-5``."""


@dataclass
class NormalizedInput:
    """An input as the SAE encodes it, with what undoes the normalisation (``cfg.input_norm``).

    x: ``[batch, d_in]`` normalised; mean, std: ``[batch, 1]`` (``None`` where the mode does not use them)."""

    x: Tensor
    mean: Tensor | None = None
    std: Tensor | None = None

    def restore(self, x_hat: Tensor) -> Tensor:
        """A reconstruction ``[batch, d_in]`` of the normalised input, as one of the raw input."""
        if self.std is not None:
            x_hat = x_hat * self.std
        return x_hat + self.mean if self.mean is not None else x_hat




class SparseAutoencoder(nn.Module):
    """Base SAE: ``x_hat = f(x) @ W_dec + b_dec`` with ``f`` chosen by the subclass.

    A subclass that sets ``architecture`` registers itself (:data:`SAE_CLASSES`); with a settings class beside it
    (:class:`canon_pl.sae.config.SAESettings`, its config: the fields ``self.cfg`` reads through) it trains through
    every command and config.
    """

    architecture: str = ""
    latents_independent: ClassVar[bool] = True
    """Whether each latent's inference activation depends on the input alone (a threshold rule), not on the other
    latents (TopK's joint choice): only then can a latent be moved into another SAE (stitching)."""
    latent_axes: ClassVar[dict[str, int]] = {"W_enc": 1, "b_enc": 0, "W_dec": 0, "tokens_since_fired": 0}
    """State tensor -> its axis over latents: what :meth:`latent_subset` slices (every other tensor is shared)."""
    input_scaled: ClassVar[tuple[str, ...]] = ("b_enc", "b_dec", "threshold")
    """State tensors in the units of the input: divided by the activation scale when it is folded into an export."""
    training_state: ClassVar[tuple[str, ...]] = ("tokens_since_fired", "threshold_initialized")
    """Buffers that only training reads: not exported."""
    saelens_architecture: ClassVar[str | None] = None
    """The ``architecture`` SAELens writes for this SAE (``None``: SAELens has no equivalent)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("architecture"):
            SAE_CLASSES[cls.architecture] = cls

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        if cfg.architecture != self.architecture:
            raise ValueError(f"{type(self).__name__} needs architecture {self.architecture!r}, "
                             f"got {cfg.architecture!r}")
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        w = torch.empty(d_sae, d_in)
        nn.init.kaiming_uniform_(w)  # fan-in d_in, as for a Linear(d_in -> d_sae)
        self.W_enc = nn.Parameter(w.T.contiguous())
        self.init_encoder_state()
        self.W_dec = nn.Parameter(F.normalize(w, dim=-1))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("threshold_initialized", torch.zeros((), dtype=torch.bool))
        # Training tokens since each latent last fired; drives AuxK and the dead fraction.
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long))

    def init_encoder_state(self) -> None:
        """Create the encoder's own tensors besides ``W_enc``: here ``b_enc [d_sae]`` and the inference ``threshold``
        (a scalar for BatchTopK; an architecture with other tensors overrides this)."""
        if self.cfg.encoder_bias:
            self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae))
        else:  # fixed at zero, but still in the state dict, so every export and format reads it the same way
            self.register_buffer("b_enc", torch.zeros(self.cfg.d_sae))
        self.register_buffer("threshold", torch.zeros(()))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    # ----------------------------------------------------------------------------------------------- encoding
    def normalize_input(self, x: Tensor) -> NormalizedInput:
        """``x [batch, d_in]`` as the encoder reads it (``cfg.input_norm``), with the per-input statistics that
        :meth:`NormalizedInput.restore` needs to undo it after decoding."""
        mode = self.cfg.input_norm
        if mode == "none":
            return NormalizedInput(x)
        mean = x.mean(dim=-1, keepdim=True)
        centred = x - mean
        if mode == "center":
            return NormalizedInput(centred, mean)
        std = centred.std(dim=-1, keepdim=True)
        return NormalizedInput(centred / (std + LAYER_NORM_EPS), mean, std)

    def encoder_bias(self) -> Tensor:
        """``b_enc - b_dec @ W_enc`` ``[d_sae]``: the decoder bias folded into the encoder's, so that the backward
        pass never forms a ``[batch, d_in]`` gradient for ``b_dec`` through a second large matmul."""
        return self.b_enc - self.b_dec @ self.W_enc

    def pre_activations(self, x: Tensor) -> Tensor:
        """``relu((n(x) - b_dec) @ W_enc + b_enc)`` with ``n`` the input normalisation (the identity unless
        ``cfg.input_norm`` says otherwise). x: ``[batch, d_in]`` -> ``[batch, d_sae]``."""
        return self._pre_activations(self.normalize_input(x).x)

    def _pre_activations(self, x: Tensor) -> Tensor:
        """Of an input already normalised ``[batch, d_in]`` -> ``[batch, d_sae]``."""
        return torch.relu(torch.addmm(self.encoder_bias(), x, self.W_enc))

    def select(self, pre: Tensor, inference: bool) -> SparseActivations | Tensor:
        """Keep the surviving activations. pre: ``[batch, d_sae]`` (non-negative).

        Returns a :class:`SparseActivations` (decoded sparsely) or a dense ``[batch, d_sae]`` tensor.
        """
        raise NotImplementedError

    def encode(self, x: Tensor, inference: bool = False) -> Tensor:
        """Latent activations. x: ``[batch, d_in]`` -> ``[batch, d_sae]``.

        ``inference=True`` uses the saved threshold (BatchTopK), so each latent is independent of the batch.
        """
        acts = self.select(self.pre_activations(x), inference)
        return acts.to_dense(self.d_sae) if isinstance(acts, SparseActivations) else acts

    # ----------------------------------------------------------------------------------------------- decoding
    def decode(self, feature_acts: Tensor) -> Tensor:
        """feature_acts: ``[batch, d_sae]`` -> ``[batch, d_in]``, in the space the encoder reads: for an SAE with an
        input normalisation, the normalised input's (``forward`` and :meth:`reconstruct` restore the raw one)."""
        return feature_acts @ self.W_dec + self.b_dec

    def decode_sparse(self, acts: SparseActivations) -> Tensor:
        """Decode touching only the selected rows of ``W_dec``: ``[batch, d_in]``."""
        counts = torch.bincount(acts.rows, minlength=acts.batch_size)
        offsets = torch.cumsum(counts, 0) - counts
        out = F.embedding_bag(acts.cols, self.W_dec, offsets, mode="sum", per_sample_weights=acts.values)
        return out + self.b_dec

    def _decode_any(self, acts: SparseActivations | Tensor) -> Tensor:
        return self.decode_sparse(acts) if isinstance(acts, SparseActivations) else self.decode(acts)

    def forward(self, x: Tensor, inference: bool = True) -> Tensor:
        """Reconstruction of the raw input (normalised, encoded, decoded, the normalisation undone with this input's
        own statistics). x: ``[batch, d_in]`` -> ``[batch, d_in]`` (inference mode by default)."""
        normalized = self.normalize_input(x)
        return normalized.restore(self._decode_any(self.select(self._pre_activations(normalized.x), inference)))

    # ----------------------------------------------------------------------------------------------- training
    def training_forward(self, x: Tensor, sparsity_scale: float = 1.0) -> TrainStepOutput:
        """Loss for one training batch. x: ``[batch, d_in]`` (already normalised); ``sparsity_scale`` multiplies the
        sparsity penalty (an L1 warm-up; the TopK family has none).

        Updates the training state (dead-latent counters, inference threshold) as a side effect. With
        ``kernel="sparse"`` the dense pre-activations are computed once without autograd and only the selected
        entries (the TopK family's choice, ReLU's positive ones) enter the graph (see
        :mod:`canon_pl.sae.sparse_grad`); ``kernel="dense"`` is the plain formula.
        """
        self.check_trainable()
        take, pre = self._pre_activations_for_training(x)
        with torch.no_grad():
            selected = self.select(pre, inference=False)
        if isinstance(selected, SparseActivations):
            acts = SparseActivations(selected.rows, selected.cols, take(selected.rows, selected.cols),
                                     selected.batch_size)
        elif selected is pre:
            acts = pre  # everything survives (ReLU with kernel="dense"): the autograd path of the plain formula
        else:  # a dense selection of an architecture's own: the surviving entries of pre, with their gradients
            acts = pre * (selected != 0)
        x_hat = self._decode_any(acts)
        losses: dict[str, Tensor] = {"mse": self.reconstruction_loss(acts, x, x_hat)}
        losses.update({name: sparsity_scale * value for name, value in self.sparsity_losses(acts).items()})
        with torch.no_grad():
            self._update_dead_counters(acts, x.shape[0])
        if self.cfg.aux_coefficient > 0:
            losses["auxk"] = self.cfg.aux_coefficient * self.auxk_loss(pre.detach(), take, x, x_hat)
        loss = torch.stack(list(losses.values())).sum()
        detached = (SparseActivations(acts.rows, acts.cols, acts.values.detach(), acts.batch_size)
                    if isinstance(acts, SparseActivations) else acts.detach())
        return TrainStepOutput(loss=loss, losses=losses, x_hat=x_hat.detach(), acts=detached, d_sae=self.d_sae)

    def check_trainable(self) -> None:
        """Raise :class:`SAEConfigError` for an SAE canon-pl cannot train (an imported one that normalises inputs)."""
        if self.cfg.input_norm != "none":
            raise SAEConfigError(f"canon-pl trains SAEs with input_norm 'none' (one activation scale, folded into the "
                                 f"weights on export); this one has {self.cfg.input_norm!r}, an imported SAE")

    def _pre_activations_for_training(self, x: Tensor):
        """``(take, pre)``: ``pre [batch, d_sae]`` and ``take(rows, cols) -> [n]``, differentiable entries of it. The
        sparse kernel knows this class's affine encoder only: an architecture with an encoder of its own (its own
        :meth:`_pre_activations`) takes the plain formula whatever ``kernel`` says."""
        own_encoder = type(self)._pre_activations is not SparseAutoencoder._pre_activations
        if self.cfg.kernel == "sparse" and not own_encoder:
            bias = self.encoder_bias()
            with torch.no_grad():
                pre = torch.addmm(bias, x, self.W_enc).relu_()
            return (lambda rows, cols: gather_pre_activations(x, self.W_enc, bias, pre, rows, cols)), pre
        pre = self.pre_activations(x)
        return (lambda rows, cols: pre[rows, cols]), pre

    def reconstruction_loss(self, acts: SparseActivations | Tensor, x: Tensor, x_hat: Tensor) -> Tensor:
        """The training MSE of ``x_hat [batch, d_in]`` against ``x``; an architecture that reconstructs in several
        ways (Matryoshka: every nested prefix of the latents) overrides it."""
        return F.mse_loss(x_hat, x)

    def sparsity_losses(self, acts: SparseActivations | Tensor) -> dict[str, Tensor]:
        """Penalties on the batch's activations (sparse, or dense ``[batch, d_sae]``): none for the TopK family, whose
        sparsity is the selection; L1 for ReLU."""
        return {}

    def dead_mask(self) -> Tensor:
        """``[d_sae]`` bool: latents silent for at least ``dead_tokens_threshold`` training tokens."""
        return self.tokens_since_fired >= self.cfg.dead_tokens_threshold

    def _update_dead_counters(self, acts: SparseActivations | Tensor, batch_size: int) -> None:
        """Counters over the global batch: under DDP a latent fired if it fired on any rank, and every rank adds
        the global token count, so the counters (and AuxK's dead set) stay identical on every rank."""
        if isinstance(acts, SparseActivations):
            fired = torch.zeros(self.d_sae, dtype=torch.bool, device=acts.cols.device)
            fired[acts.cols] = True
        else:
            fired = (acts > 0).any(dim=0)
        fired, tokens = fired_anywhere(fired, batch_size)
        self.tokens_since_fired += tokens
        self.tokens_since_fired[fired] = 0

    def auxk_loss(self, pre: Tensor, take, x: Tensor, x_hat: Tensor) -> Tensor:
        """AuxK: reconstruct the residual from the top ``aux_k`` dead latents of each token.

        pre: ``[batch, d_sae]`` (no grad) to choose them; ``take(rows, cols)`` gives their differentiable values;
        x and x_hat: ``[batch, d_in]``. Zero (with a graph) when no latent is dead.
        """
        dead = torch.nonzero(self.dead_mask(), as_tuple=True)[0]
        if dead.numel() == 0:
            return x_hat.new_zeros(()) + 0.0 * x_hat.sum()
        batch = x.shape[0]
        k_aux = min(self.cfg.aux_k, dead.numel(), max(self.d_sae // 2, 1))
        with torch.no_grad():
            _, local = pre[:, dead].topk(k_aux, dim=-1, sorted=False)  # [batch, k_aux]
        cols = dead[local].reshape(-1)
        rows = torch.arange(batch, device=x.device).repeat_interleave(k_aux)
        values = take(rows, cols).clamp_min(0.0).view(batch, k_aux)
        residual_hat = F.embedding_bag(cols.view(batch, k_aux), self.W_dec, mode="sum", per_sample_weights=values)
        return F.mse_loss(residual_hat, (x - x_hat).detach())

    @torch.no_grad()
    def update_threshold(self, smallest_kept: Tensor) -> None:
        """EMA of the smallest kept activation per batch (the BatchTopK inference threshold)."""
        if not bool(self.threshold_initialized):
            self.threshold.copy_(smallest_kept)
            self.threshold_initialized.fill_(True)
        else:
            m = self.cfg.threshold_momentum
            self.threshold.mul_(m).add_((1.0 - m) * smallest_kept)

    # ----------------------------------------------------------------------------------------------- decoder constraint
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the component of each ``W_dec`` row's gradient parallel to the row (call before a step)."""
        grad = self.W_dec.grad
        if grad is None:
            return
        unit = F.normalize(self.W_dec, dim=-1)
        grad -= (grad * unit).sum(dim=-1, keepdim=True) * unit

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every ``W_dec`` row to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Restore the constraints an optimizer step breaks (call after each): unit-norm decoder rows, and whatever
        an architecture adds (JumpReLU: thresholds ≥ 0)."""
        self.normalize_decoder()

    def training_scalars(self) -> dict[str, Tensor]:
        """What the training log records of this SAE's own state each step: here the inference threshold (its mean
        over latents); an architecture without one records its own tensors or nothing."""
        return {"threshold": self.threshold.detach().mean()}

    def param_groups(self, lr: float) -> list[dict[str, object]]:
        """Optimizer parameter groups at learning rate ``lr``: one group; an architecture whose parameters live on
        another scale (JumpReLU's thresholds) gives them their own rate."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def inference_ready(self) -> bool:
        """Whether inference can run: an SAE whose inference threshold is learned as a running statistic (BatchTopK)
        has none before training."""
        return True

    def training_flops(self, batch: int, active_per_token: float) -> int:
        """FLOPs of forward + backward of one training step on ``batch`` tokens with ``active_per_token`` latents
        active on average (matrix products only, one multiply-add = 2; see :mod:`canon_pl.sae.flops`)."""
        if self.cfg.kernel == "sparse":
            return sparse_kernel_flops(batch, self.d_in, self.d_sae, active_per_token)
        return dense_encoder_flops(batch, self.d_in, self.d_sae, active_per_token)

    # ----------------------------------------------------------------------------------------------- export
    def export_tensors(self) -> dict[str, Tensor]:
        """What an export writes: every tensor of the state but the training-only buffers (:attr:`training_state`),
        so an architecture's own tensors travel without a list kept anywhere else."""
        return {name: tensor for name, tensor in self.state_dict().items() if name not in self.training_state}

    def saelens_tensors(self) -> dict[str, Tensor]:
        """The tensors of this SAE's SAELens file (:attr:`saelens_architecture`): the exported ones, a ``jumprelu``
        threshold broadcast to ``[d_sae]`` (how SAELens saves BatchTopK), no threshold for other architectures."""
        tensors = dict(self.export_tensors())
        threshold = tensors.pop("threshold", None)
        if self.saelens_architecture == "jumprelu" and threshold is not None:
            tensors["threshold"] = threshold.expand(self.d_sae)
        return tensors

    def saelens_config(self) -> dict[str, object]:
        """``cfg.json`` entries of this SAE's SAELens file beyond the shared ones (``metadata`` merged into SAELens's
        metadata)."""
        return {}

    @torch.no_grad()
    def fold_activation_scale(self, scale: float) -> SparseAutoencoder:
        """A copy that takes raw activations, for an SAE trained on ``x * scale``.

        The pre-activations and outputs are divided by ``scale`` (the tensors in :attr:`input_scaled`: biases and
        thresholds); ``W_enc`` and the unit-norm ``W_dec`` are unchanged, so latent directions and top-k choices are
        identical.
        """
        folded = copy.deepcopy(self)
        state = folded.state_dict(keep_vars=True)
        for name in self.input_scaled:
            state[name].div_(scale)
        return folded

    @torch.no_grad()
    def latent_subset(self, latents: Tensor, b_dec: Tensor | None = None) -> SparseAutoencoder:
        """An SAE of the latents ``latents [n]`` alone, each computing exactly its activation here (inference), on an
        input already normalised (its ``input_norm`` is ``none``): the building block of stitching.

        ``b_dec [d_in]``: the decoder bias the subset subtracts before encoding instead of this SAE's, the difference
        folded into the encoder (:meth:`rebase_decoder_bias`), so activations are unchanged.
        """
        if not self.latents_independent:
            raise ValueError(f"a {self.architecture} SAE's latents depend on each other; they cannot be taken apart")
        n = int(latents.numel())
        cfg = replace(self.cfg.for_width(n), input_norm="none")
        with torch.device("meta"):  # shapes only: no memory, no draw from the random stream
            subset = type(self)(cfg)
        subset.load_state_dict(self.latent_state(latents), assign=True)
        if b_dec is not None:
            subset.rebase_decoder_bias(b_dec)
        return subset.train(False)

    @torch.no_grad()
    def latent_state(self, latents: Tensor) -> dict[str, Tensor]:
        """A copy of this SAE's state restricted to ``latents [n]``: the tensors of :attr:`latent_axes` sliced along
        their latent axis, every other one whole."""
        return {name: (tensor.index_select(self.latent_axes[name], latents.to(tensor.device))
                       if name in self.latent_axes else tensor).detach().clone()
                for name, tensor in self.state_dict().items()}

    @torch.no_grad()
    def rebase_decoder_bias(self, b_dec: Tensor) -> None:
        """Replace ``b_dec [d_in]`` and fold the difference into the encoder bias, so the pre-activations of every
        input are unchanged: ``b_enc += (b_dec_new - b_dec) @ W_enc``."""
        self.b_enc.add_((b_dec - self.b_dec) @ self.W_enc)
        self.b_dec.copy_(b_dec)
