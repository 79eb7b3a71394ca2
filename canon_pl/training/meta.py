"""Meta-SAE training: decoder rows as a DataModule, the meta-SAE as an ``SAEModule`` with the paper's defaults, and
the analysis written after ``fit``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader

from canon_pl.checks import check_counts, check_positive
from canon_pl.distributed import rank_local, world
from canon_pl.io import load_sae
from canon_pl.io.family import MANIFEST_FILE
from canon_pl.io.load import load_family
from canon_pl.meta import (
    analyze_meta_sae,
    check_meta_width,
    decoder_rows,
    floor_text,
    sample_rows,
    write_meta_analysis,
)
from canon_pl.sae import BatchTopKSettings, SAEConfigError, SAESettings, SparseAutoencoder
from canon_pl.training.datamodules import ResumableStreamDataModule, _loader
from canon_pl.training.module import SAEModule
from canon_pl.training.schedule import OptimizerSettings


class DecoderRowsDataModule(ResumableStreamDataModule):
    """The unit-normalised decoder rows of a base SAE, sampled with replacement (no tokens involved).

    Batch ``i`` is a pure function of (``seed``, ``i``), so a resumed run continues with the same rows. Validation
    passes over every row once, so ``val/explained_variance`` is the FVE of the whole decoder.
    """

    def __init__(self, base_sae: str, width: int | None = None, batch_size: int = 16384, seed: int = 0,
                 val_batch_size: int = 16384) -> None:
        """
        Args:
            base_sae: The base SAE: an export folder, a family folder (with ``width``) or a ``.ckpt`` (named apart
                from the module's ``sae`` settings, which the logger records beside it).
            width: Which member of a family.
            batch_size: Rows per batch on each rank (the paper: 16384 in all).
            seed: Seed of the sampling.
            val_batch_size: Rows per validation batch.
        """
        super().__init__()
        self.save_hyperparameters()
        check_counts(batch_size=batch_size, val_batch_size=val_batch_size)
        self._base: SparseAutoencoder | None = None
        self._rows: Tensor | None = None

    @property
    def base(self) -> SparseAutoencoder:
        """The base SAE (loaded on first use, so a config can name one that a later step writes)."""
        if self._base is None:
            self._base = load_sae(self.hparams.base_sae, width=self.hparams.width)
        return self._base

    @property
    def rows(self) -> Tensor:
        """``[d_base, d_in]`` unit-normalised decoder rows."""
        if self._rows is None:
            self._rows = decoder_rows(self.base)
        return self._rows

    @property
    def d_in(self) -> int:
        return self.rows.shape[1]

    def setup(self, stage: str) -> None:
        module = getattr(self.trainer, "lightning_module", None)
        d_meta = getattr(module, "widths", [None])[-1]
        if d_meta is not None:
            check_meta_width(self.rows.shape[0], int(d_meta))

    def train_batches(self, start: int) -> Iterator[tuple[int, Tensor]]:
        """Batch ``i`` of rows; under DDP each rank takes its slice of the global batch ``i`` of ``batch_size x
        world_size`` rows (as :class:`SyntheticActivationDataModule` does)."""
        rank, size = world()
        bs = self.hparams.batch_size
        index = start
        while True:
            yield index + 1, sample_rows(self.rows, bs * size, index, self.hparams.seed)[rank * bs:(rank + 1) * bs]
            index += 1

    def val_dataloader(self) -> DataLoader:
        size = self.hparams.val_batch_size
        return _loader(lambda: (self.rows[s:s + size] for s in range(0, self.rows.shape[0], size)))

    def base_directory(self) -> Path | None:
        """The base SAE's export folder (a family member's own folder), or ``None`` for a ``.ckpt``."""
        path = Path(self.hparams.base_sae)
        if (path / MANIFEST_FILE).is_file():
            from canon_pl.io import read_family_manifest

            members = read_family_manifest(path)["members"]
            return path / members[str(self.hparams.width)] if str(self.hparams.width) in members else None
        return path if path.is_dir() else None

    def initial_rows(self) -> Tensor | None:
        """``[d_base, d_in]`` the base's decoder rows at initialisation (rebuilt from the export's init seed), or
        ``None`` when the export does not record it."""
        from canon_pl.io import initial_decoder

        directory = self.base_directory()
        return initial_decoder(directory) if directory is not None else None

    def smaller_saes(self) -> dict[int, SparseAutoencoder]:
        """The family members narrower than the base, when the base was given as (or lies in) a family folder."""
        path = Path(self.hparams.base_sae)
        family_dir = path if (path / MANIFEST_FILE).is_file() else path.parent
        if not (family_dir / MANIFEST_FILE).is_file():
            return {}
        family = load_family(family_dir)
        return {w: sae for w, sae in family.saes.items() if w < self.base.d_sae}


META_SAE_SETTINGS = BatchTopKSettings(k=4, aux_k=256, dead_tokens_threshold=1_000_000)
"""The meta-SAE's defaults: 4 meta-latents per decoder row on average (the paper), AuxK over 256 dead meta-latents,
dead after a million rows without firing."""
META_SAE_OPTIMIZER = OptimizerSettings(lr=1e-3)
"""The meta-SAE's optimizer: Adam at the paper's learning rate 1e-3."""


class MetaSAEModule(SAEModule):
    """A BatchTopK meta-SAE: the token-SAE core and training step with the meta-SAE's defaults (k = 4, lr 1e-3, no
    input normalisation). Inputs are decoder rows ``[batch, d_in]``."""

    def __init__(self, d_in: int, d_sae: int, sae: BatchTopKSettings = META_SAE_SETTINGS,
                 optimizer: OptimizerSettings = META_SAE_OPTIMIZER, **settings: Any) -> None:
        """
        Args:
            d_in: Width of the base SAE's decoder rows (its d_in).
            d_sae: Number of meta-latents (the paper: base width / 21, e.g. 49152 -> 2304).
            sae: The meta-SAE's BatchTopK settings (default :data:`META_SAE_SETTINGS`: k = 4 meta-latents per row
                on average, as the paper; ``encoder_bias: false`` is the authors' meta-SAE).
            optimizer: Adam and its schedule (default :data:`META_SAE_OPTIMIZER`: lr 1e-3, the paper's).
            settings: ``b_dec_init`` (``zeros`` is the authors' meta-SAE), ``init_seed``, ``export_dir``:
                :class:`SAEFamilyModule`'s (a meta-SAE reads decoder rows: no input normalisation, no hook point).
        """
        sae = SAESettings.from_value(sae, META_SAE_SETTINGS)
        if type(sae) is not BatchTopKSettings:
            raise SAEConfigError(f"a meta-SAE is a BatchTopK SAE; got {type(sae).__name__} settings")
        super().__init__(d_in=d_in, d_sae=d_sae, sae=sae, optimizer=OptimizerSettings.from_value(optimizer),
                         normalize_activations=False, hook_point=None, model_id=None, **settings)
        self.save_hyperparameters()


class MetaSAEAnalysisCallback(L.Callback):
    """After ``fit``: decompose every base latent and write ``analysis.json`` + ``analysis.safetensors`` next to the
    meta-SAE's export (see docs/meta_sae_results.md)."""

    def __init__(self, data: str | None = None, tokens: int = 8192, ce: bool = False, baseline_steps: int = 300,
                 dirpath: str | None = None, floor_steps: int | None = 0, floor_batch_size: int | None = None,
                 sweep_d_sae_per_d_in: list[float] | None = None) -> None:
        """
        Args:
            data: Activations at the base SAE's hook point for the base-reconstruction comparison: an activation cache
                folder or a text source (``None`` skips it).
            tokens: Tokens of ``data`` to use.
            ce: Also splice the base SAE (original and meta-reconstructed decoder) into the LM (text data only).
            baseline_steps: Training steps of each baseline (0 skips them).
            dirpath: Output folder; ``None`` = the module's ``export_dir`` or else the trainer's ``default_root_dir``.
            floor_steps: Steps of each floor (the same meta-SAE trained on random unit rows and on the base's
                initial decoder); ``None`` = as many as the meta-SAE trained; 0 skips them.
            floor_batch_size: Rows per floor batch; ``None`` = the meta-SAE's batch size.
            sweep_d_sae_per_d_in: Also train meta-SAEs of these widths (multiples of d_in; the paper's is 3) from
                scratch, each with its floors and PCA cap, as long as the floors (``width_sweep`` in the analysis).
        """
        for multiple in sweep_d_sae_per_d_in or []:
            check_positive(sweep_d_sae_per_d_in=multiple)
        check_counts(tokens=tokens)
        check_counts(0, baseline_steps=baseline_steps)
        if floor_steps is not None:
            check_counts(0, floor_steps=floor_steps)
        if floor_batch_size is not None:
            check_counts(floor_batch_size=floor_batch_size)
        self.data, self.tokens, self.ce = data, tokens, ce
        self.baseline_steps, self.dirpath = baseline_steps, dirpath
        self.floor_steps, self.floor_batch_size = floor_steps, floor_batch_size
        self.sweep_d_sae_per_d_in = list(sweep_d_sae_per_d_in or [])

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, DecoderRowsDataModule):
            return
        meta = next(iter(pl_module.unsharded_members().values())).eval()  # every rank: gathers an FSDP-sharded SAE
        if trainer.is_global_zero:
            with rank_local():
                self._analyse(trainer, pl_module, datamodule, meta)

    def _analyse(self, trainer: L.Trainer, pl_module: L.LightningModule, datamodule: DecoderRowsDataModule,
                 meta: SparseAutoencoder) -> None:
        from canon_pl.training.analysis_data import analysis_activations

        base = datamodule.base
        activations = spliced = None
        if self.data is not None:
            from canon_pl.io import training_data

            directory = datamodule.base_directory()
            activations, spliced, _ = analysis_activations(
                self.data, self.tokens, base, ce=self.ce,
                provenance=training_data(directory) if directory is not None else None)
        device = meta.W_dec.device
        floor_steps = int(trainer.global_step) if self.floor_steps is None else self.floor_steps
        analysis = analyze_meta_sae(meta, base.to(device), datamodule.smaller_saes(), activations, spliced,
                                    baseline_steps=self.baseline_steps, initial_rows=datamodule.initial_rows(),
                                    floor_steps=floor_steps,
                                    floor_batch_size=self.floor_batch_size or datamodule.hparams.batch_size,
                                    floor_lr=float(pl_module.learning_rates[str(pl_module.widths[0])]),
                                    floor_b_dec_init=str(pl_module.settings.b_dec_init),
                                    sweep_widths=[max(1, round(m * meta.d_in)) for m in self.sweep_d_sae_per_d_in])
        analysis.summary["base"] = {"source": str(datamodule.hparams.base_sae), "width": datamodule.hparams.width,
                                    "model_id": base.cfg.model_id, "hook_point": base.cfg.hook_point}
        target = Path(self.dirpath or getattr(getattr(pl_module, "settings", pl_module.hparams), "export_dir", None) or trainer.default_root_dir)
        path = write_meta_analysis(analysis, target)
        s = analysis.summary
        rank_zero_info(f"canon-pl: meta-SAE FVE {s['fve']:.3f} (floors: {floor_text(s.get('floors')) or 'not run'}; PCA cap "
                       f"{s['pca_cap']['fraction']:.3f}), {s['mean_meta_per_latent']:.2f} meta-latents per "
                       f"latent, {s['dead_meta_fraction']:.1%} dead; analysis in {path}")
        for entry in s.get("width_sweep") or []:
            rank_zero_info(f"canon-pl: meta-SAE width sweep: {entry['n_meta']} meta-latents ({entry['per_d_in']:.2g} x "
                           f"d_in) FVE {entry['fve']:.3f}, floors: {floor_text(entry['floors'])}")
