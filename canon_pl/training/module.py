"""``SAEModule``: trains one SAE from any DataModule that yields ``[batch, d_in]`` activations."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from canon_pl.io.export import export_sae
from canon_pl.metrics import (
    DeadLatentFraction,
    ExplainedVariance,
    FiringDensityHistogram,
    MeanL0,
    SplicedLanguageModelLoss,
)
from canon_pl.sae import SAEConfig, SparseAutoencoder, build_sae


class NonFiniteError(FloatingPointError):
    """NaN or Inf in the activations or the loss; training stops and earlier checkpoints are left as they were."""


class InputShapeError(ValueError):
    """The data does not have the SAE's input width."""


def default_learning_rate(d_sae: int) -> float:
    """3e-4 for 2^14 latents, scaled as ``1 / sqrt(d_sae / 2^14)`` for wider SAEs (DESIGN.md 1.1)."""
    return 3e-4 / math.sqrt(max(d_sae / 2**14, 1.0))


class SAEModule(L.LightningModule):
    """One sparse autoencoder, trained on normalised activations and exported to take raw ones.

    The arguments mirror :class:`canon_pl.sae.SAEConfig` plus the optimiser and normalisation settings; all
    are plain values so the checkpoint loads with ``torch.load(weights_only=True)``.
    """

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        architecture: str = "batchtopk",
        k: int = 32,
        l1_coefficient: float = 5.0,
        aux_k: int = 512,
        aux_coefficient: float = 1.0 / 32.0,
        dead_tokens_threshold: int = 10_000_000,
        threshold_momentum: float = 0.99,
        hook_point: str | None = None,
        model_id: str | None = None,
        lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.99),
        normalize_activations: bool = True,
        b_dec_init: str = "mean",
        export_dir: str | None = None,
    ) -> None:
        """
        Args:
            d_in: Width of the activations; must match the data.
            d_sae: Number of latents.
            architecture: ``batchtopk``, ``topk`` or ``relu``.
            k: Latents per token (TopK family).
            l1_coefficient: L1 weight (``relu`` only).
            aux_k: Dead latents per token in the AuxK loss.
            aux_coefficient: AuxK weight (1/32 in the BatchTopK paper).
            dead_tokens_threshold: Training tokens without firing after which a latent is dead.
            threshold_momentum: EMA momentum of the inference threshold.
            hook_point: Where the activations come from, recorded in the export.
            model_id: The language model, recorded in the export.
            lr: Adam learning rate; ``None`` = 3e-4 scaled by ``1/sqrt(d_sae / 2^14)`` for wide SAEs.
            betas: Adam betas.
            normalize_activations: Scale inputs so ``E[||x||^2] = d_in`` (measured on the first batch, folded into
                the export).
            b_dec_init: ``mean`` (mean of the first batch) or ``zeros``.
            export_dir: Where the portable export goes at the end of ``fit``; ``None`` = the trainer's
                ``default_root_dir``.
        """
        super().__init__()
        self.save_hyperparameters()
        if b_dec_init not in ("mean", "zeros"):
            raise ValueError(f"b_dec_init must be 'mean' or 'zeros', got {b_dec_init!r}")
        self.sae_cfg = SAEConfig(
            d_in=d_in, d_sae=d_sae, architecture=architecture, k=k, l1_coefficient=l1_coefficient, aux_k=aux_k,
            aux_coefficient=aux_coefficient, dead_tokens_threshold=dead_tokens_threshold,
            threshold_momentum=threshold_momentum, hook_point=hook_point, model_id=model_id,
        )
        self.sae: SparseAutoencoder = build_sae(self.sae_cfg)
        self.lr = lr if lr is not None else default_learning_rate(d_sae)
        self.register_buffer("activation_scale", torch.ones(()))
        self.register_buffer("input_stats_initialized", torch.zeros((), dtype=torch.bool))
        self.val_explained_variance = ExplainedVariance()
        self.val_l0 = MeanL0()
        self.val_dead = DeadLatentFraction(d_sae)
        self.val_density = FiringDensityHistogram(d_sae)
        self.val_spliced = SplicedLanguageModelLoss()
        self._last_step_time: float | None = None

    # --------------------------------------------------------------------------------------------- inputs
    def setup(self, stage: str) -> None:
        data_d_in = getattr(getattr(self.trainer, "datamodule", None), "d_in", None)
        if isinstance(data_d_in, int) and data_d_in != self.sae_cfg.d_in:
            raise InputShapeError(
                f"the data yields {data_d_in}-dimensional activations but the SAE has d_in={self.sae_cfg.d_in}; "
                f"set model.init_args.d_in: {data_d_in} (or point the data at the right hook point)"
            )

    def _check_input(self, x: Any, stage: str) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputShapeError(f"{stage} batches must be [batch, d_in] tensors, got {shape}")
        if x.shape[1] != self.sae_cfg.d_in:
            raise InputShapeError(
                f"the data yields {x.shape[1]}-dimensional activations but the SAE has d_in={self.sae_cfg.d_in}; "
                f"set model.init_args.d_in: {x.shape[1]} (or point the data at the right hook point)"
            )
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).any(dim=1).sum().item()
            raise NonFiniteError(
                f"{stage} batch {self.global_step} has NaN/Inf activations in {bad} of {x.shape[0]} tokens; "
                f"check the activation source (a corrupt cache shard, an fp16 overflow in the model)"
            )
        return x.float()

    @torch.no_grad()
    def _initialize_input_statistics(self, x: Tensor) -> None:
        """Activation scale (``E[||x||^2] = d_in``) and ``b_dec`` from the first training batch ``[batch, d_in]``."""
        if self.hparams.normalize_activations:
            mean_sq_norm = x.pow(2).sum(dim=-1).mean()
            self.activation_scale.fill_(math.sqrt(self.sae_cfg.d_in / mean_sq_norm.clamp_min(1e-12).item()))
        if self.hparams.b_dec_init == "mean":
            self.sae.b_dec.copy_((x * self.activation_scale).mean(dim=0))
        self.input_stats_initialized.fill_(True)

    # --------------------------------------------------------------------------------------------- training
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x = self._check_input(batch, "training")
        if not bool(self.input_stats_initialized):
            self._initialize_input_statistics(x)
        out = self.sae.training_forward(x * self.activation_scale)
        if not torch.isfinite(out.loss):
            parts = ", ".join(f"{k}={v.item():.4g}" for k, v in out.losses.items())
            raise NonFiniteError(
                f"the loss became non-finite at step {self.global_step} ({parts}); training stopped and the "
                f"checkpoints already written are untouched: lower the learning rate (now {self.lr:.3g}) or check the data"
            )
        with torch.no_grad():
            x_n = x * self.activation_scale
            fvu = (out.x_hat - x_n).pow(2).sum() / (x_n - x_n.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
            l0 = out.l0
        log = {f"train/{name}": value.detach() for name, value in out.losses.items()}
        log.update({"train/loss": out.loss.detach(), "train/fvu": fvu, "train/l0": l0,
                    "train/dead_fraction": self.sae.dead_mask().float().mean()})
        excluded = getattr(getattr(self.trainer, "datamodule", None), "excluded_fraction", None)
        if isinstance(excluded, float):
            log["data/excluded_fraction"] = torch.tensor(excluded)
        self.log_dict(log, on_step=True, on_epoch=False)
        now = time.perf_counter()
        if self._last_step_time is not None:
            self.log("tok/s", x.shape[0] / max(now - self._last_step_time, 1e-9), prog_bar=True, on_step=True)
        self._last_step_time = now
        self.log("fvu", fvu, prog_bar=True, on_step=True, logger=False)
        return out.loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.sae.remove_parallel_decoder_grad()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.sae.normalize_decoder()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.sae.parameters(), lr=self.lr, betas=tuple(self.hparams.betas))

    # --------------------------------------------------------------------------------------------- evaluation
    def reconstruct(self, x: Tensor, inference: bool = True) -> Tensor:
        """Reconstruction of raw activations ``[batch, d_in]`` -> ``[batch, d_in]``, as the export computes it."""
        return self.sae(x * self.activation_scale, inference=inference) / self.activation_scale

    def validation_step(self, batch: Tensor | dict[str, Tensor], batch_idx: int) -> None:
        """batch: ``[batch, d_in]`` activations, or a dict with ``activations``, ``tokens`` and ``mask`` from a
        DataModule that can also splice the SAE into the language model (``spliced_sums``)."""
        raw = batch["activations"] if isinstance(batch, dict) else batch
        x = self._check_input(raw, "validation") * self.activation_scale
        acts = self.sae.encode(x, inference=True)
        x_hat = self.sae.decode(acts)
        self.val_explained_variance.update(x_hat, x)
        self.val_l0.update(acts)
        self.val_dead.update(acts)
        self.val_density.update(acts)
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(batch, dict) and hasattr(datamodule, "spliced_sums"):
            sums = datamodule.spliced_sums(batch["tokens"], batch["mask"], lambda h: self.reconstruct(h.float()))
            self.val_spliced.update(sums)

    def on_validation_epoch_end(self) -> None:
        explained = self.val_explained_variance.compute()
        log = {
            "val/explained_variance": explained,
            "val/fvu": 1.0 - explained,
            "val/l0": self.val_l0.compute(),
            "val/dead_fraction": self.val_dead.compute(),
        }
        if float(self.val_spliced.n_tokens) > 0:
            log.update({f"val/{key}": value for key, value in self.val_spliced.compute().items()})
        self.log_dict(log, prog_bar=False)
        for metric in (self.val_explained_variance, self.val_l0, self.val_dead, self.val_density, self.val_spliced):
            metric.reset()

    # --------------------------------------------------------------------------------------------- export
    def export(self, directory: str | Path) -> Path:
        """Write ``sae.safetensors`` + ``cfg.json`` (activation scale folded in) to ``directory``."""
        return export_sae(self.sae, directory, activation_scale=float(self.activation_scale),
                          extra={"training": {"global_step": int(self.global_step), "lr": self.lr}})
