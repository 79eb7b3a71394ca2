"""``StitchingCallback``: the stitching analysis of a family's adjacent widths at every validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from canon_pl.distributed import rank_local
from canon_pl.io.layout import RunLayout
from canon_pl.sae import SAEConfigError, initial_sae
from canon_pl.stitching import (
    DEFAULT_TAU,
    analyze_pair,
    check_tau,
    spliced_loss_on,
    write_stitching_results,
)


class StitchingCallback(L.Callback):
    """Runs :func:`canon_pl.stitching.analyze_pair` on held-out activations for pairs of a family's widths.

    Logs ``stitch/<small>_<large>/{novel_fraction, novel_fraction_definition, proxy_agreement, path_auc,
    path_monotone_fraction, path_excess, stuck_at_init_fraction}`` and, when the family has a seed control of the
    larger width, ``control_novel_fraction`` and ``control_novel_fraction_definition`` (so the novel fraction's
    course over training can be drawn beside its control's), and writes ``<output_dir>/<small>_<large>.json`` +
    ``.safetensors`` (the format of ``canon-pl stitch``).
    """

    def __init__(
        self,
        pairs: list[tuple[int, int]] | None = None,
        tau: float = DEFAULT_TAU,
        max_tokens: int = 8192,
        ce_points: int = 0,
        ce_batches: int = 1,
        output_dir: str | None = None,
        full_controls: bool = False,
    ) -> None:
        """
        Args:
            pairs: ``[[small, large], ...]`` widths to stitch; ``None`` = every adjacent pair of the family.
            tau: Decoder-cosine threshold between reconstruction and novel latents (the paper: 0.7).
            max_tokens: Held-out tokens the analysis uses (the first validation batches).
            ce_points: Points along the path at which to splice the stitched SAE into the LM (0 = none; needs a
                DataModule with ``spliced_sums``, such as ``ActivationDataModule``).
            ce_batches: Validation batches used for those next-token losses.
            output_dir: Where results go; ``None`` = ``<trainer.default_root_dir>/stitching``.
            full_controls: Also the control's path, the replicate and the per-chunk spread at every validation
                (what ``canon-pl stitch`` measures; they double the analysis's cost). Off, the control gives its
                novel fractions and matched consistency, what the course over training draws.
        """
        self.pairs = [tuple(int(w) for w in pair) for pair in pairs] if pairs is not None else None
        self.tau = check_tau(tau)
        self.max_tokens = max_tokens
        self.ce_points = ce_points
        self.ce_batches = ce_batches
        self.output_dir = output_dir
        self.full_controls = full_controls
        self._activations: list[Tensor] = []
        self._lm_batches: list[tuple[Tensor, Tensor]] = []

    def _pairs_for(self, pl_module: L.LightningModule) -> list[tuple[int, int]]:
        widths = list(getattr(pl_module, "widths", []))
        if self.pairs is None:
            if len(widths) < 2:
                raise SAEConfigError("StitchingCallback needs a family of at least two widths (SAEFamilyModule); "
                                     f"this module has widths {widths}")
            return list(zip(widths, widths[1:]))
        for pair in self.pairs:
            if len(pair) != 2 or any(w not in widths for w in pair):
                raise SAEConfigError(f"StitchingCallback pair {list(pair)} is not two of the family's widths {widths}")
        return list(self.pairs)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._pairs_for(pl_module)  # a bad pair fails before training, not at the first validation

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._activations, self._lm_batches = [], []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        acts = batch["activations"] if isinstance(batch, dict) else batch
        have = sum(a.shape[0] for a in self._activations)
        if have < self.max_tokens:
            self._activations.append(acts[: self.max_tokens - have].detach().float())
        if isinstance(batch, dict) and self.ce_points > 0 and len(self._lm_batches) < self.ce_batches:
            self._lm_batches.append((batch["tokens"], batch["mask"]))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._activations:
            return
        members = pl_module.unsharded_members()  # every rank: gathers the members when FSDP shards them
        if trainer.is_global_zero:
            with rank_local():
                self._stitch(trainer, pl_module, members)

    def _stitch(self, trainer: L.Trainer, pl_module: L.LightningModule, members: dict[str, Any]) -> None:
        if not all(sae.inference_ready() for sae in members.values()):
            rank_zero_warn("StitchingCallback: skipped, the SAEs have no inference threshold before training")
            return
        x = torch.cat(self._activations)
        datamodule = getattr(trainer, "datamodule", None)
        spliced = None
        if self.ce_points > 0 and self._lm_batches and hasattr(datamodule, "spliced_sums"):
            spliced = spliced_loss_on(datamodule.spliced_sums, self._lm_batches)
        out_dir = Path(self.output_dir or RunLayout(trainer.default_root_dir).stitching)
        scale = float(pl_module.activation_scale)
        log: dict[str, float] = {}
        specs = getattr(pl_module, "member_specs", {})
        for small_w, large_w in self._pairs_for(pl_module):
            small = members[str(small_w)].fold_activation_scale(scale).eval()
            large = members[str(large_w)].fold_activation_scale(scale).eval()
            control_key = pl_module.seed_control_of(large_w)
            control = members[control_key].fold_activation_scale(scale).eval() if control_key else None
            initial = initial_sae(large.cfg, specs[str(large_w)][1]).W_dec if str(large_w) in specs else None
            result = analyze_pair(small, large, x, self.tau, spliced_loss=spliced, ce_points=self.ce_points,
                                  names=(f"width {small_w}", f"width {large_w}"), large_initial_decoder=initial,
                                  control=control, control_name=control_key, data="the run's validation batches",
                                  control_extras=self.full_controls)
            result.summary["global_step"] = int(trainer.global_step)
            path = write_stitching_results(result, out_dir, name=f"{small_w}_{large_w}")
            s = result.summary
            prefix = f"stitch/{small_w}_{large_w}"
            optional = {"novel_fraction_definition": s["classes"]["novel_fraction_definition"],
                        "stuck_at_init_fraction": s["classes"]["stuck_at_init_fraction"]}
            if s["control"] is not None:
                optional.update({"control_novel_fraction": s["control"]["novel_fraction_cosine"],
                                 "control_novel_fraction_definition": s["control"]["novel_fraction_definition"]})
            log.update({f"{prefix}/novel_fraction": s["novel_fraction"],
                        f"{prefix}/proxy_agreement": s["proxy"]["agreement"] or 0.0,
                        f"{prefix}/path_auc": s["path_auc"],
                        f"{prefix}/path_monotone_fraction": s["path_monotone_fraction"],
                        f"{prefix}/path_excess": s["path_excess"],
                        **{f"{prefix}/{k}": v for k, v in optional.items() if v is not None}})
            rank_zero_info(f"canon-pl: stitched {small_w} -> {large_w}: {s['novel_fraction']:.1%} novel, "
                           f"proxy agreement {s['proxy']['agreement'] or 0.0:.1%} ({path})")
        if log:
            pl_module.log_dict(log, rank_zero_only=True)
