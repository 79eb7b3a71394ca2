"""``MultiHookFamilyModule``: a family of SAE widths at each of several hook points, trained from one LM forward.

Each hook point's family is an :class:`~canon_pl.training.SAEFamilyModule` of its own (its activation scale, its
members, its seed controls), fed that hook point's part of every batch from
:class:`~canon_pl.training.MultiHookActivationDataModule`; so each trains as it would in a run of its own on the same
tokens. One Adam optimiser holds every member of every family (Adam's state is per parameter). Metrics are logged as
``<hook point>/<width>/train/...``; the export writes ``<run>/<hook point>/`` as an ordinary family folder per hook
point and ``hooks.json`` last, so stitching, statistics and the viewer treat each family as any other (pairs are
only ever formed inside one hook point's family).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor, nn

from canon_pl.errors import SettingError
from canon_pl.io.family import write_hooks_manifest
from canon_pl.io.layout import RunLayout
from canon_pl.lm.multi_hook import check_hook_points
from canon_pl.training.module import (
    InputShapeError,
    SAEFamilyModule,
    adam_with_schedule,
    claim_run_folder,
    log_training_step,
    refuse_non_finite_checkpoint,
    release_run_folder,
)
from canon_pl.training.schedule import OptimizerSettings


def family_key(hook_point: str) -> str:
    """The module name of ``hook_point``'s family (``model.layers.6`` -> ``model_layers_6``: no dots in names)."""
    return hook_point.replace(".", "_")


class MultiHookFamilyModule(L.LightningModule):
    """One :class:`SAEFamilyModule` per hook point, trained side by side on one multi-hook activation stream."""

    def __init__(self, d_in: int, hook_points: list[str], export_dir: str | None = None, **family: Any) -> None:
        """
        Args:
            d_in: Width of the activations at every hook point; must match the data.
            hook_points: The hook points, in the data's order; each gets a family.
            export_dir: Where the exports go at the end of ``fit``; ``None`` = the trainer's ``default_root_dir``.
            family: ``widths``, ``sae``, ``optimizer``, ``normalize_activations``, ``b_dec_init``, ``init_seed``,
                ``model_id``, ``base_width``, ``control_seeds``, ``control_widths``: :class:`SAEFamilyModule`'s, the
                same for every hook point's family (each hook point's members draw the same initialisation streams).
        """
        super().__init__()
        self.save_hyperparameters()
        self.hook_points = check_hook_points(list(hook_points))
        self.export_dir = export_dir
        optimizer = OptimizerSettings.from_value(family.get("optimizer"))
        for key in ("sae", "optimizer"):  # plain dicts in checkpoints (torch.load(weights_only=True))
            if hasattr(self._hparams.get(key), "to_dict"):
                self._hparams[key] = self._hparams[key].to_dict()
        self._hparams_initial = copy.deepcopy(self._hparams)
        self.families = nn.ModuleDict()
        for hook_point in self.hook_points:
            member = SAEFamilyModule(d_in=d_in, hook_point=hook_point, sparsity_variants=None, export_dir=None,
                                     **family)
            member.metric_prefix = f"{hook_point}/"
            self.families[family_key(hook_point)] = member
        self.optimizer_settings = optimizer

    def family(self, hook_point: str) -> SAEFamilyModule:
        """The family trained at ``hook_point``."""
        return self.families[family_key(hook_point)]

    def by_hook(self) -> dict[str, SAEFamilyModule]:
        return {h: self.family(h) for h in self.hook_points}

    @property
    def d_in(self) -> int:
        return int(self.hparams.d_in)

    # --------------------------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:
            data_hooks = list(getattr(datamodule, "hook_points", []))
            if data_hooks != self.hook_points:
                raise InputShapeError(
                    f"the data reads hook points {data_hooks or '(one, not a multi-hook stream)'} but "
                    f"model.init_args.hook_points is {self.hook_points}; use MultiHookActivationDataModule with the "
                    f"same hook_points, in the same order")
            data_d_in = getattr(datamodule, "d_in", None)
            if isinstance(data_d_in, int) and data_d_in != self.d_in:
                raise InputShapeError(f"the data yields {data_d_in}-dimensional activations but the SAEs have "
                                      f"d_in={self.d_in}; set model.init_args.d_in: {data_d_in}")
            for hook_point, provenance in datamodule.provenance_by_hook().items():
                family = self.family(hook_point)
                family.data_provenance = dict(provenance)
                family._adopt_activation_source(family.data_provenance)
        for family in self.families.values():
            family.trainer = self.trainer if self._trainer is not None else None  # global_step, logging state
        claim_run_folder(self, stage)

    def teardown(self, stage: str) -> None:
        release_run_folder(self)

    def configure_model(self) -> None:
        if self.device_mesh is not None:
            raise SettingError("a multi-hook run does not shard its SAEs (FSDP): train it with DDP or on one device, "
                               "or give each hook point a run of its own under FSDP")

    # --------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """batch: ``{hook point: [batch, d_in]}`` from :class:`MultiHookActivationDataModule`."""
        if not isinstance(batch, dict) or list(batch) != self.hook_points:
            got = list(batch) if isinstance(batch, dict) else type(batch).__name__
            raise InputShapeError(f"multi-hook training batches must be {{hook point: [batch, d_in]}} for "
                                  f"{self.hook_points}, got {got}; use MultiHookActivationDataModule")
        losses, log = [], {}
        for hook_point, family in self.by_hook().items():
            loss, family_log = family.train_members(batch[hook_point])
            losses.append(loss)
            log.update(family_log)
        log_training_step(self, log, batch[self.hook_points[0]].shape[0])
        return sum(losses[1:], losses[0])

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        for family in self.families.values():
            family.on_before_optimizer_step(optimizer)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        for family in self.families.values():
            for sae in family.members.values():
                sae.after_optimizer_step()

    def configure_optimizers(self) -> Any:
        groups = [group for family in self.families.values() for group in family.param_groups()]
        return adam_with_schedule(groups, self.optimizer_settings, self)

    # --------------------------------------------------------------------------------------------- evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """batch: ``{"activations": {hook point: [n, d_in]}, "tokens": [n_ctx, seq], "mask": [n_ctx, seq]}``."""
        for hook_point, family in self.by_hook().items():
            family.update_validation(batch["activations"][hook_point])
        datamodule = getattr(self.trainer, "datamodule", None)
        if "tokens" in batch and hasattr(datamodule, "spliced_sums_by_hook"):
            reconstructions = {h: family.reconstructions() for h, family in self.by_hook().items()}
            sums = datamodule.spliced_sums_by_hook(batch["tokens"], batch["mask"], reconstructions)
            for hook_point, family_sums in sums.items():
                self.family(hook_point).update_spliced(family_sums)

    def on_validation_epoch_end(self) -> None:
        log = {}
        for family in self.families.values():
            log.update(family.validation_log())
        self.log_dict(log, prog_bar=False, sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        refuse_non_finite_checkpoint(checkpoint, int(self.global_step), next(self.parameters()).device)
        checkpoint["canon_pl_sae_configs"] = {f"{h}/{key}": sae.cfg.to_dict() for h, family in self.by_hook().items()
                                              for key, sae in family.members.items()}

    # --------------------------------------------------------------------------------------------- export
    def export(self, directory: str | Path) -> Path:
        """Each hook point's family to ``<directory>/<hook point>/`` (an ordinary family folder), then
        ``hooks.json``."""
        directory = Path(directory)
        layout = RunLayout(directory)
        for hook_point, family in self.by_hook().items():
            family.export(layout.hook_family(hook_point))
        if self._trainer is None or self.trainer.is_global_zero:
            write_hooks_manifest(directory, {h: layout.hook_family(h).name for h in self.hook_points})
        return directory


__all__ = ["MultiHookFamilyModule", "family_key"]
