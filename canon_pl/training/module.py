"""``SAEFamilyModule`` trains several SAE widths on one activation stream; ``SAEModule`` is the one-SAE case.

Every member sees the same batch; the members share nothing but the input statistics (activation scale measured on
the first batch), so each trains exactly as it would alone with the same seed and data. One Adam optimiser holds a
parameter group per member (its own learning rate); Adam's state is per parameter, so the sum of the members'
losses gives each member the update it would get alone.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.data import AttributeDict
from torch import Tensor, nn

from canon_pl.checks import check_fits_in_memory, check_output_folder
from canon_pl.distributed import (
    all_reduce,
    assign_parameter,
    full_tensor,
    global_batch_size,
    is_distributed,
    is_sharded,
    world,
)
from canon_pl.errors import CanonError, SettingError
from canon_pl.io.export import export_sae
from canon_pl.io.family import write_family_manifest
from canon_pl.io.lock import RunFolderLock
from canon_pl.metrics import (
    DeadLatentFraction,
    ExplainedVariance,
    FiringDensityHistogram,
    MeanL0,
    SplicedLanguageModelLoss,
)
from canon_pl.sae import (
    BatchTopKSettings,
    SAEConfig,
    SAEConfigError,
    SAESettings,
    SparseActivations,
    SparseAutoencoder,
    build_sae,
    initial_sae,
)
from canon_pl.training.checkpoint_io import use_atomic_checkpoint_io
from canon_pl.training.schedule import OptimizerSettings, lr_factor


class NonFiniteError(CanonError, FloatingPointError):
    """NaN or Inf in the activations or the loss; training stops and earlier checkpoints are left as they were."""


class InputShapeError(CanonError, ValueError):
    """The data does not have the SAE's input width."""


def default_learning_rate(d_sae: int) -> float:
    """3e-4 for 2^14 latents, scaled as ``1 / sqrt(d_sae / 2^14)`` for wider SAEs (docs/design.md 1.1)."""
    return 3e-4 / math.sqrt(max(d_sae / 2**14, 1.0))


def check_widths(widths: list[int], base_width: int | None) -> list[int]:
    """Widths must be distinct, increasing and (when ``base_width`` is set) multiples of it."""
    if not widths:
        raise SAEConfigError("a family needs at least one width")
    if any(b <= a for a, b in zip(widths, widths[1:])):
        raise SAEConfigError(f"family widths must be strictly increasing, got {widths}; sort them")
    if base_width is not None:
        bad = [w for w in widths if w % base_width]
        if bad:
            raise SAEConfigError(f"widths {bad} are not multiples of base_width={base_width}; fix widths or base_width")
    return list(widths)


def control_key(width: int, seed: int) -> str:
    """The member name of the cross-seed control of ``width`` drawn from ``seed`` (its folder in the export)."""
    return f"{width}_seed{seed}"


def variant_key(width: int, overrides: dict[str, Any]) -> str:
    """The member name of ``width`` trained with ``overrides`` of the family's SAE settings (``576_k16``)."""
    def shown(value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    return f"{width}_" + "_".join(f"{name}{shown(value)}" for name, value in sorted(overrides.items()))


def check_sparsity_variants(settings: SAESettings, variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each variant a non-empty mapping of fields of ``settings``' class to other values (``{"k": 16}``,
    ``{"l1_coefficient": 10.0}``), none the family's own settings, no two alike (raises :class:`SAEConfigError`)."""
    known = {f.name for f in dataclasses.fields(settings)}
    checked: list[dict[str, Any]] = []
    for overrides in variants:
        if not isinstance(overrides, dict) or not overrides:
            raise SAEConfigError(f"each of model.init_args.sparsity_variants must map settings to values (for "
                                 f"example {{k: 16}}), got {overrides!r}")
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise SAEConfigError(f"sparsity_variants {overrides}: {type(settings).__name__} has no setting "
                                 f"{', '.join(unknown)}; it has {', '.join(sorted(known))}")
        if all(getattr(settings, name) == value for name, value in overrides.items()):
            raise SAEConfigError(f"sparsity_variants {overrides} repeats the family's own settings; leave it out")
        if overrides in checked:
            raise SAEConfigError(f"sparsity_variants lists {overrides} twice")
        checked.append(dict(overrides))
    return checked


def _member_metrics(d_sae: int) -> nn.ModuleDict:
    return nn.ModuleDict({
        "explained_variance": ExplainedVariance(),
        "l0": MeanL0(),
        "dead_fraction": DeadLatentFraction(d_sae),
        "density": FiringDensityHistogram(d_sae),
        "spliced": SplicedLanguageModelLoss(),
    })


def claim_run_folder(module: L.LightningModule, stage: str) -> None:
    """One writer per run folder: a second live run into ``trainer.default_root_dir`` is refused before anything is
    written (a run that dies leaves a stale lock that the next run on this host takes over); checkpoints are written
    atomically."""
    if module._trainer is None:
        return
    if stage == "fit" and module.trainer.is_global_zero:
        check_output_folder(module.trainer.default_root_dir, "trainer.default_root_dir")
        module._run_lock = RunFolderLock(module.trainer.default_root_dir)
        module._run_lock.acquire()
    use_atomic_checkpoint_io(module.trainer)  # no truncated .ckpt on a full disk; restricted reads on resume


def release_run_folder(module: L.LightningModule) -> None:
    lock = getattr(module, "_run_lock", None)
    if lock is not None:
        lock.release()


def log_training_step(module: L.LightningModule, log: dict[str, Tensor], batch_tokens: int) -> None:
    """Log one step's metrics, the data's excluded fraction and the tokens per second of ``batch_tokens`` per rank
    (timed from the module's previous step: ``module._last_step_time``)."""
    excluded = getattr(getattr(module.trainer, "datamodule", None), "excluded_fraction", None)
    if isinstance(excluded, float):
        log["data/excluded_fraction"] = torch.tensor(excluded)
    module.log_dict(log, on_step=True, on_epoch=False)
    tokens = batch_tokens * world()[1]
    now = time.perf_counter()
    last = getattr(module, "_last_step_time", None)
    if last is not None:
        module.log("tok/s", tokens / max(now - last, 1e-9), prog_bar=True, on_step=True)
    module._last_step_time = now


def refuse_non_finite_checkpoint(checkpoint: dict[str, Any], step: int, device: torch.device) -> None:
    """:class:`NonFiniteError` when any floating-point tensor of the checkpoint's state dict has NaN/Inf values on
    any rank (every rank decides together), so the last checkpoint on disk stays the last good one."""
    bad = ""
    for name, tensor in checkpoint["state_dict"].items():
        local = tensor.to_local() if is_sharded(tensor) else tensor  # a rank's shard (distributed checkpoints)
        if local.is_floating_point() and not torch.isfinite(local).all():
            bad = f"{name} has NaN/Inf values ({int((~torch.isfinite(local)).sum())} of {local.numel()})"
            break
    if all_reduce(torch.tensor(int(bool(bad)), device=device), "max"):
        what = bad or "weights on another rank have NaN/Inf values"
        raise NonFiniteError(
            f"refusing to write a checkpoint at step {step}: {what}; the checkpoints already written are untouched: "
            f"resume from the last one with a lower learning rate or check the data"
        )


def adam_with_schedule(groups: list[dict[str, Any]], schedule: OptimizerSettings,
                       module: L.LightningModule) -> torch.optim.Optimizer | dict[str, Any]:
    """Adam over ``groups`` under ``schedule`` (a ``LambdaLR`` stepped every optimizer step, its position saved in
    every checkpoint; plain Adam when the rate is constant)."""
    optimizer = torch.optim.Adam(groups, betas=schedule.betas)
    if schedule.is_constant:
        return optimizer
    max_steps = int(module.trainer.max_steps) if module._trainer is not None else -1
    schedule.check_fits(max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(schedule, step, max_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class SAEFamilyModule(L.LightningModule):
    """SAEs of several widths trained side by side on one stream; exported to ``<dir>/<width>/`` + ``family.json``.

    All arguments are plain values so checkpoints load with ``torch.load(weights_only=True)``.
    """

    def __init__(
        self,
        d_in: int,
        widths: list[int],
        sae: SAESettings = BatchTopKSettings(),
        optimizer: OptimizerSettings = OptimizerSettings(),
        normalize_activations: bool = True,
        b_dec_init: str = "mean",
        init_seed: int = 0,
        hook_point: str | None = None,
        model_id: str | None = None,
        base_width: int | None = None,
        control_seeds: list[int] | None = None,
        control_widths: list[int] | None = None,
        sparsity_variants: list[dict[str, Any]] | None = None,
        export_dir: str | None = None,
    ) -> None:
        """
        Args:
            d_in: Width of the activations; must match the data.
            widths: Numbers of latents, strictly increasing (for example 576 × [2, 4, 8, 16, 32]).
            sae: The architecture and its hyper-parameters, shared by every width: ``BatchTopKSettings`` (the
                default), ``TopKSettings``, ``ReLUSettings`` or any registered ``canon_pl.sae.SAESettings`` subclass.
            optimizer: Adam's learning rate and betas and the learning-rate schedule.
            normalize_activations: Scale inputs so ``E[||x||^2] = d_in`` (first batch; folded into the exports).
            b_dec_init: ``mean`` (mean of the first batch) or ``zeros``.
            init_seed: Seed of the weight initialisation (each width draws its own stream from it).
            hook_point: Where the activations come from; ``None`` = the data's (recorded in every export).
            model_id: The language model; ``None`` = the data's.
            base_width: When set, every width must be a multiple of it.
            control_seeds: Other init seeds: each adds, for every width of ``control_widths``, a member that
                differs only in its initialisation (``<width>_seed<seed>``), trained on the same batches. Stitching
                compares the same width across seeds next to each pair of widths: the cross-seed control.
            control_widths: Widths that get seed controls; ``None`` = every width but the smallest (the larger SAE
                of each adjacent pair).
            sparsity_variants: Width × L0: each entry changes some of ``sae``'s settings (``{k: 16}``,
                ``{l1_coefficient: 10.0}``) and adds, for every width, a member trained with that change alone
                (``<width>_k16``: same initialisation, same batches), so an effect of width can be told from one of
                L0. Recorded under ``variants`` in ``family.json``; stitching and the seed controls leave them out.
            export_dir: Where exports go at the end of ``fit``; ``None`` = the trainer's ``default_root_dir``.
        """
        settings = {key: value for key, value in locals().items() if key not in ("self", "__class__")}
        settings["sae"] = SAESettings.from_value(sae)
        settings["optimizer"] = OptimizerSettings.from_value(optimizer)
        super().__init__()
        self.save_hyperparameters()
        # The resolved arguments, read by the code below. ``hparams`` holds what the caller gave (under LightningCLI
        # only the instantiated subclass's own arguments), so it cannot be relied on for the full set.
        self.settings = AttributeDict(settings)
        if b_dec_init not in ("mean", "zeros"):
            raise SettingError(f"model.init_args.b_dec_init must be 'mean' or 'zeros', got {b_dec_init!r}")
        self.widths = check_widths(list(widths), base_width)
        variants = [(variant_key(w, overrides), w, overrides) for overrides in
                    check_sparsity_variants(settings["sae"], list(sparsity_variants or [])) for w in self.widths]
        self.member_overrides = {key: overrides for key, _, overrides in variants}
        """``{member name: the settings it changes}`` for the sparsity variants (empty for the widths and controls)."""
        self.variant_widths = {key: width for key, width, _ in variants}
        """``{member name: its width}`` for the sparsity variants."""
        self.member_specs = self._member_specs(control_seeds or [], control_widths)
        # W_enc and W_dec with their gradients and Adam's two moments: 4 float32 copies of 2 x d_in x d_sae each
        check_fits_in_memory("the SAEs' weights, gradients and Adam state",
                             sum(4 * 4 * 2 * int(d_in) * w for w, _ in self.member_specs.values()),
                             "lower model.init_args.widths / d_sae")
        self.members = nn.ModuleDict({key: self._build_member(w, seed, self.member_overrides.get(key))
                                      for key, (w, seed) in self.member_specs.items()})
        lr = self.settings.optimizer.lr
        self.learning_rates = {key: lr if lr is not None else default_learning_rate(w)
                               for key, (w, _) in self.member_specs.items()}
        self.register_buffer("activation_scale", torch.ones(()))
        self.register_buffer("input_stats_initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("tokens_trained", torch.zeros((), dtype=torch.long))
        self.val_metrics = nn.ModuleDict({key: _member_metrics(w) for key, (w, _) in self.member_specs.items()})
        self._last_step_time: float | None = None
        self._batch_tokens: int | None = None
        self._active_per_token: dict[str, float] = {}  # each member's L0 in the last training batch
        # How the training activations were made (the DataModule's provenance, set in ``setup``): every export
        # records it, so analyses capture text exactly as training did.
        self.data_provenance: dict[str, Any] = {}

    def _member_specs(self, control_seeds: list[int], control_widths: list[int] | None) -> dict[str, tuple[int, int]]:
        """``{member name: (width, init seed)}``: the widths first, then their seed controls, then the sparsity
        variants (:attr:`member_overrides`)."""
        init_seed = int(self.settings.init_seed)
        specs = {str(w): (w, init_seed) for w in self.widths}
        controlled = list(control_widths) if control_widths is not None else self.widths[1:]
        unknown = [w for w in controlled if w not in self.widths]
        if unknown:
            raise SAEConfigError(f"control_widths {unknown} are not widths of the family {self.widths}")
        if init_seed in control_seeds or len(set(control_seeds)) != len(control_seeds):
            raise SAEConfigError(f"control_seeds {control_seeds} must be distinct and differ from init_seed={init_seed}")
        for seed in control_seeds:
            specs.update({control_key(w, seed): (w, int(seed)) for w in controlled})
        specs.update({key: (width, init_seed) for key, width in self.variant_widths.items()})
        return specs

    def seed_control_of(self, width: int) -> str | None:
        """The first seed control of ``width`` (its member name), ``None`` when it has none."""
        return next((key for key, (w, seed) in self.member_specs.items()
                     if w == width and key != str(w) and key not in self.member_overrides), None)

    def save_hyperparameters(self, *args: Any, frame: Any = None, **kwargs: Any) -> None:
        """Lightning's, with the settings objects stored as plain dicts (so checkpoints load with
        ``torch.load(weights_only=True)`` and the module is rebuilt from them by ``load_from_checkpoint``)."""
        super().save_hyperparameters(*args, frame=frame or inspect.currentframe().f_back, **kwargs)
        for key in ("sae", "optimizer"):
            if hasattr(self._hparams.get(key), "to_dict"):
                self._hparams[key] = self._hparams[key].to_dict()
        self._hparams_initial = copy.deepcopy(self._hparams)

    def _build_member(self, width: int, init_seed: int, overrides: dict[str, Any] | None = None) -> SparseAutoencoder:
        hp = self.settings
        settings = dataclasses.replace(hp.sae, **overrides) if overrides else hp.sae
        return initial_sae(settings.sae_config(hp.d_in, width, hp.hook_point, hp.model_id), init_seed)

    metric_prefix = ""
    """Put before every logged metric's name (a multi-hook run sets ``<hook point>/`` on each hook point's family)."""

    def _prefix(self, key: str) -> str:
        return f"{self.metric_prefix}{key}/"

    # --------------------------------------------------------------------------------------------- sharding
    def configure_model(self) -> None:
        """Under :class:`~canon_pl.training.SAEFSDPStrategy` (FSDP2): shard each member's parameters by rows over the
        ranks. ``training_forward``, ``encode`` and ``decode`` gather them on entry like ``forward`` does."""
        mesh = self.device_mesh
        if mesh is None or self._sharded():
            return
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for sae in self.members.values():
            # Kept whole from forward to backward: the training step's sparse kernels save the gathered weights.
            fully_shard(sae, mesh=mesh["data_parallel"], reshard_after_forward=False)
            for method in ("training_forward", "encode", "decode"):
                register_fsdp_forward_method(sae, method)

    def unsharded_members(self) -> dict[str, SparseAutoencoder]:
        """Each member with whole tensors: the members themselves, or, when FSDP shards them, gathered copies (a
        collective: every rank must call this)."""
        if not self._sharded():
            return dict(self.members)
        gathered = {}
        for key, sae in self.members.items():
            state = {name: full_tensor(t).detach().clone() for name, t in sae.state_dict().items()}
            copy = build_sae(sae.cfg)
            copy.load_state_dict(state)
            gathered[key] = copy.to(self.activation_scale.device)
        return gathered

    def _sharded(self) -> bool:
        """Whether FSDP shards the members (their parameters are plain tensors while gathered for a forward)."""
        from torch.distributed.fsdp import FSDPModule

        return any(isinstance(sae, FSDPModule) for sae in self.members.values())

    def _writes_files(self) -> bool:
        """Rank 0 alone writes exports and results (every rank when there is no trainer)."""
        return self._trainer is None or self.trainer.is_global_zero

    @property
    def d_in(self) -> int:
        return int(self.settings.d_in)

    # --------------------------------------------------------------------------------------------- inputs
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        data_d_in = getattr(datamodule, "d_in", None)
        batch_size = getattr(getattr(datamodule, "hparams", None), "batch_size", None)
        if isinstance(batch_size, int):  # the dense pre-activations of one batch, a few copies in the step
            check_fits_in_memory(f"a batch of {batch_size} tokens through {max(self.widths)} latents",
                                 3 * 4 * batch_size * max(self.widths), "lower data.init_args.batch_size")
        if isinstance(data_d_in, int) and data_d_in != self.d_in:
            raise InputShapeError(
                f"the data yields {data_d_in}-dimensional activations but the SAE has d_in={self.d_in}; "
                f"set model.init_args.d_in: {data_d_in} (or point the data at the right hook point)"
            )
        if hasattr(datamodule, "provenance"):
            self.data_provenance = dict(datamodule.provenance())
            self._adopt_activation_source(self.data_provenance)
        claim_run_folder(self, stage)

    def teardown(self, stage: str) -> None:
        release_run_folder(self)

    def _adopt_activation_source(self, source: dict[str, Any]) -> None:
        """Every export records where its activations came from: the data's hook point and model fill the module's
        when it left them unset; a hook point (or a model named differently from a model the data names, not a
        local folder) that disagrees is refused before training, since cfg.json would record the wrong one."""
        for data_key, setting in (("hook_point", "hook_point"), ("model", "model_id")):
            data_value, mine = source.get(data_key), self.settings[setting]
            if data_value is None:
                continue
            data_value = str(data_value)
            if mine is None:
                self.settings[setting] = data_value
                # The logged hyper-parameters record the adopted value too: Lightning refuses a module and a
                # DataModule whose hparams share a key (``hook_point``) with different values.
                for logged in (self._hparams, self._hparams_initial):
                    if setting in logged:
                        logged[setting] = data_value
                for sae in self.members.values():
                    sae.cfg = dataclasses.replace(sae.cfg, **{setting: data_value})
            elif mine != data_value and not (setting == "model_id" and Path(data_value).exists()):
                raise InputShapeError(
                    f"the data's activations come from {data_key} {data_value!r} but model.init_args.{setting} is "
                    f"{mine!r}, which every export would record; state the same {data_key} in both (or leave "
                    f"model.init_args.{setting} unset to take the data's)")

    def _check_input(self, x: Any, stage: str) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputShapeError(f"{stage} batches must be [batch, d_in] tensors, got {shape}")
        if x.shape[1] != self.d_in:
            raise InputShapeError(
                f"the data yields {x.shape[1]}-dimensional activations but the SAE has d_in={self.d_in}; "
                f"set model.init_args.d_in: {x.shape[1]} (or point the data at the right hook point)"
            )
        bad_tokens = (~torch.isfinite(x)).any(dim=1).sum()
        if stage == "training" and is_distributed():
            # Every rank stops together, naming the rank whose data is bad (one small collective per step).
            rank, size = world()
            per_rank = torch.zeros(size, dtype=torch.long, device=x.device)
            per_rank[rank] = bad_tokens
            per_rank = all_reduce(per_rank)
        else:
            per_rank = bad_tokens.view(1)
        if bool(per_rank.any()):
            where = "" if per_rank.numel() == 1 else f" on rank {int(per_rank.nonzero()[0])}"
            raise NonFiniteError(
                f"{stage} batch {self.global_step}{where} has NaN/Inf activations in {int(per_rank.max())} of "
                f"{x.shape[0]} tokens; check the activation source (a corrupt cache shard, an fp16 overflow in the "
                f"model)"
            )
        return x.float()

    @torch.no_grad()
    def _initialize_input_statistics(self, x: Tensor) -> None:
        """Activation scale (``E[||x||^2] = d_in``) and each ``b_dec`` from the first training batch ``[batch, d_in]``
        (the global batch under DDP: sums are reduced over ranks, so every rank starts from the same values)."""
        n_tokens = global_batch_size(x.shape[0], x.device)
        if self.settings.normalize_activations:
            mean_sq_norm = all_reduce(x.pow(2).sum()) / n_tokens
            self.activation_scale.fill_(math.sqrt(self.d_in / mean_sq_norm.clamp_min(1e-12).item()))
        if self.settings.b_dec_init == "mean":
            mean = all_reduce(x.sum(dim=0)) / n_tokens * self.activation_scale
            for sae in self.members.values():
                assign_parameter(sae.b_dec, mean)
        self.input_stats_initialized.fill_(True)

    # --------------------------------------------------------------------------------------------- training
    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss, log = self.train_members(batch)
        log_training_step(self, log, batch.shape[0])
        last = self._prefix(str(self.widths[-1]))
        self.log("fvu", log[f"{last}train/fvu"], prog_bar=True, on_step=True, logger=False)
        return loss

    def train_members(self, batch: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Every member's training forward on ``batch`` ``[batch, d_in]`` (raw activations): the sum of their losses
        and what to log of each (under :meth:`_prefix`); counts the batch's tokens as trained."""
        x = self._check_input(batch, "training")
        if not bool(self.input_stats_initialized):
            self._initialize_input_statistics(x)
        x_n = x * self.activation_scale
        with torch.no_grad():
            total_variance = (x_n - x_n.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
        losses, log = [], {}
        sparsity_scale = self.sparsity_scale()
        for key, sae in self.members.items():
            out = sae.training_forward(x_n, sparsity_scale=sparsity_scale)
            if not torch.isfinite(out.loss):
                parts = ", ".join(f"{k}={v.item():.4g}" for k, v in out.losses.items())
                raise NonFiniteError(
                    f"the loss of the {key}-latent SAE became non-finite at step {self.global_step} ({parts}); "
                    f"training stopped and the checkpoints already written are untouched: lower the learning rate "
                    f"(now {self.learning_rates[key]:.3g}) or check the data"
                )
            losses.append(out.loss)
            if isinstance(out.acts, SparseActivations):  # its size is known on the host: no device sync
                self._active_per_token[key] = out.acts.values.numel() / x_n.shape[0]
            prefix = self._prefix(key)
            log.update({f"{prefix}train/{name}": value.detach() for name, value in out.losses.items()})
            fvu = (out.x_hat - x_n).pow(2).sum() / total_variance
            log.update({f"{prefix}train/loss": out.loss.detach(), f"{prefix}train/fvu": fvu,
                        f"{prefix}train/l0": out.l0, f"{prefix}train/dead_fraction": sae.dead_mask().float().mean()})
            log.update({f"{prefix}train/{name}": value for name, value in sae.training_scalars().items()})
        self._batch_tokens = x.shape[0]
        self.tokens_trained += x.shape[0] * world()[1]  # every rank's batch has the same size (the DataModules say)
        return torch.stack(losses).sum(), log

    def sparsity_scale(self) -> float:
        """Fraction of the L1 weight in force at this step: rises linearly to 1 over ``l1_warmup_steps``."""
        warmup = int(getattr(self.settings.sae, "l1_warmup_steps", 0))
        return 1.0 if warmup <= 0 else min(1.0, (int(self.global_step) + 1) / warmup)

    @property
    def flops_per_batch(self) -> int | None:
        """FLOPs of this rank's training step over every member (read by ``SAEThroughputMonitor``); ``None`` before
        the first batch."""
        if self._batch_tokens is None:
            return None
        return sum(sae.training_flops(self._batch_tokens, self._active_per_token.get(key, 0.0))
                   for key, sae in self.members.items())

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        for sae in self.members.values():
            sae.remove_parallel_decoder_grad()

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        for sae in self.members.values():
            sae.after_optimizer_step()

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        """Adam over every member at its own learning rate, under the ``optimizer`` settings' schedule (a ``LambdaLR``
        stepped every optimizer step; its position is saved in every checkpoint)."""
        return adam_with_schedule(self.param_groups(), self.settings.optimizer, self)

    def param_groups(self) -> list[dict[str, Any]]:
        """Each member's Adam parameter groups at the member's learning rate (an architecture may scale some of its
        parameters' rate: :meth:`SparseAutoencoder.param_groups`)."""
        return [group for key, sae in self.members.items() for group in sae.param_groups(self.learning_rates[key])]

    # --------------------------------------------------------------------------------------------- evaluation
    def reconstruct(self, x: Tensor, width: int | str | None = None, inference: bool = True) -> Tensor:
        """Reconstruction of raw activations ``[batch, d_in]`` by one member, as its export computes it."""
        key = str(width if width is not None else self.widths[-1])
        return self.members[key](x * self.activation_scale, inference=inference) / self.activation_scale

    def validation_step(self, batch: Tensor | dict[str, Tensor], batch_idx: int) -> None:
        """batch: ``[batch, d_in]`` activations, or a dict with ``activations``, ``tokens`` and ``mask`` from a
        DataModule that can also splice SAEs into the language model (``spliced_sums``)."""
        self.update_validation(batch["activations"] if isinstance(batch, dict) else batch)
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(batch, dict) and hasattr(datamodule, "spliced_sums"):
            self.update_spliced(datamodule.spliced_sums(batch["tokens"], batch["mask"], self.reconstructions()))

    def update_validation(self, raw: Tensor) -> None:
        """Add held-out activations ``[n, d_in]`` (raw) to every member's EV, L0, dead fraction and density."""
        x = self._check_input(raw, "validation") * self.activation_scale
        for key, sae in self.members.items():
            metrics = self.val_metrics[key]
            acts = sae.encode(x, inference=True)
            metrics["explained_variance"].update(sae.decode(acts), x)
            for name in ("l0", "dead_fraction", "density"):
                metrics[name].update(acts)

    def reconstructions(self) -> dict[str, Any]:
        """``{member: raw [n, d_in] -> its reconstruction [n, d_in]}``, to splice into the LM."""
        return {key: (lambda h, key=key: self.reconstruct(h.float(), key)) for key in self.members}

    def update_spliced(self, sums: dict[str, dict[str, Tensor]]) -> None:
        """Add each member's spliced next-token loss sums (``spliced_loss_sums``'s result)."""
        for key, member_sums in sums.items():
            self.val_metrics[key]["spliced"].update(member_sums)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.validation_log(), prog_bar=False, sync_dist=True)  # reduced by torchmetrics already
        self._reshard()

    def validation_log(self) -> dict[str, Tensor]:
        """Every member's held-out metrics since the last call (under :meth:`_prefix`); resets them."""
        log = {}
        for key, metrics in self.val_metrics.items():
            prefix = self._prefix(key)
            explained = metrics["explained_variance"].compute()
            log.update({f"{prefix}val/explained_variance": explained, f"{prefix}val/fvu": 1.0 - explained,
                        f"{prefix}val/l0": metrics["l0"].compute(),
                        f"{prefix}val/dead_fraction": metrics["dead_fraction"].compute()})
            if float(metrics["spliced"].n_tokens) > 0:
                log.update({f"{prefix}val/{name}": value for name, value in metrics["spliced"].compute().items()})
            for metric in metrics.values():
                metric.reset()
        return log

    def _reshard(self) -> None:
        """Free the gathered weights an FSDP member kept after an evaluation forward (``reshard_after_forward`` is
        off for training), so the next training step gathers fresh ones outside inference mode."""
        if self._sharded():
            for sae in self.members.values():
                sae.reshard()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Each member's full SAE config, so a checkpoint describes its SAEs whatever ``hparams`` holds. A checkpoint
        of non-finite weights is refused, so the last one on disk stays the last good one."""
        refuse_non_finite_checkpoint(checkpoint, int(self.global_step), self.activation_scale.device)
        checkpoint["canon_pl_sae_configs"] = {key: sae.cfg.to_dict() for key, sae in self.members.items()}

    # --------------------------------------------------------------------------------------------- export
    def _export_extra(self, key: str) -> dict[str, Any]:
        extra = {"training": {"global_step": int(self.global_step), "tokens": int(self.tokens_trained),
                              "init_seed": self.member_specs[key][1]},
                 "lr": self.learning_rates[key]}
        if self.data_provenance:
            extra["data"] = dict(self.data_provenance)
        return extra

    def export(self, directory: str | Path) -> Path:
        """Write each member to ``<directory>/<name>/`` (activation scale folded in) and ``family.json`` last (the
        widths as members, the seed controls under ``controls``)."""
        directory = Path(directory)
        members = self.unsharded_members()
        if not self._writes_files():
            return directory
        scale = float(self.activation_scale)
        for key, sae in members.items():
            export_sae(sae, directory / key, activation_scale=scale, extra=self._export_extra(key))
        controls = {key: {"width": w, "init_seed": seed} for key, (w, seed) in self.member_specs.items()
                    if key != str(w) and key not in self.member_overrides}
        variants = {key: {"width": self.member_specs[key][0], **overrides}
                    for key, overrides in self.member_overrides.items()}
        write_family_manifest(directory, {w: str(w) for w in self.widths}, self.members[str(self.widths[0])].cfg,
                              tokens=int(self.tokens_trained), controls=controls, variants=variants)
        return directory


class SAEModule(SAEFamilyModule):
    """One sparse autoencoder: a family of one, logged under ``train/...``, ``val/...`` and exported to the run
    folder itself (``sae.safetensors`` + ``cfg.json``)."""

    def __init__(self, d_in: int, d_sae: int, **settings: Any) -> None:
        """
        Args:
            d_in: Width of the activations; must match the data.
            d_sae: Number of latents.
            settings: ``sae``, ``optimizer``, ``normalize_activations``, ``b_dec_init``, ``init_seed``, ``hook_point``,
                ``model_id``, ``export_dir``: :class:`SAEFamilyModule`'s (the export goes to the run folder itself).
        """
        super().__init__(d_in=d_in, widths=[d_sae], base_width=None, control_seeds=None, control_widths=None,
                         sparsity_variants=None, **settings)
        self.save_hyperparameters()

    @property
    def sae(self) -> SparseAutoencoder:
        return self.members[str(self.widths[0])]

    @property
    def sae_cfg(self) -> SAEConfig:
        return self.sae.cfg

    @property
    def lr(self) -> float:
        return self.learning_rates[str(self.widths[0])]

    def _prefix(self, key: str) -> str:
        return ""

    def export(self, directory: str | Path) -> Path:
        """Write ``sae.safetensors`` + ``cfg.json`` (activation scale folded in) to ``directory`` (rank 0 only; every
        rank must call it when the SAE is sharded)."""
        sae = self.unsharded_members()[str(self.widths[0])]
        if not self._writes_files():
            return Path(directory)
        return export_sae(sae, directory, activation_scale=float(self.activation_scale),
                          extra=self._export_extra(str(self.widths[0])))
