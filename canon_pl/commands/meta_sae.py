"""``canon-pl meta-sae``: train a meta-SAE on the decoder rows of any exported SAE and write its analysis."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from canon_pl.errors import SettingError
from canon_pl.io.layout import RunLayout

DESCRIPTION = """Train a meta-SAE (Leask et al. 2025) on the unit-normalised decoder rows of an SAE and decompose every
latent into meta-latents. Writes <out>/sae.safetensors + cfg.json (the meta-SAE), analysis.json + analysis.safetensors
(docs/meta_sae_results.md) and logs/. Same as `lightning fit` with MetaSAEModule and DecoderRowsDataModule."""


def meta_sae(*, sae: str, width: int | None = None, d_sae: int | None = None, d_sae_per_d_in: float | None = None,
             k: int = 4, steps: int = 2000, batch_size: int = 16384, lr: float = 1e-3, data: str | None = None,
             tokens: int = 8192, ce: bool = False, baseline_steps: int = 300, floor_steps: int | None = None,
             sweep_d_sae_per_d_in: list[float] | None = None, encoder_bias: bool = True,
             b_dec_init: Literal["mean", "zeros"] = "mean", out: str | None = None, accelerator: str = "auto",
             seed: int = 0) -> int:
    """Train a meta-SAE on the decoder rows of an SAE and write it with its analysis.

    Args:
        sae: the base SAE: export folder, family folder (+ --width) or .ckpt
        width: family member to decompose
        d_sae: meta-latents (default: base width / 21, the paper's base/meta ratio)
        d_sae_per_d_in: meta-latents as a multiple of d_in instead (the paper's geometry: 2304 = 3 x 768)
        k: meta-latents per latent
        steps: training batches
        batch_size: rows per batch
        lr: Adam learning rate
        data: activations for the base-reconstruction comparison: cache folder or text
        tokens: tokens of --data
        ce: also the spliced next-token loss (text --data only)
        baseline_steps: steps per baseline; 0 skips them
        floor_steps: steps of each floor (the same meta-SAE on random unit rows and on the base's initial decoder;
            default: as many as --steps; 0 skips them)
        sweep_d_sae_per_d_in: also train meta-SAEs of these widths (multiples of d_in; the paper's is 3) as long as
            the floors, each with its own floors and PCA cap (analysis.json width_sweep)
        encoder_bias: learn the encoder bias (--no_encoder_bias: none, as the authors' meta-SAE; pair with
            --b_dec_init zeros)
        b_dec_init: decoder bias at the start: the mean row or 0 (the authors' meta-SAE)
        out: output folder (default checkpoints/meta_sae_<width>)
        accelerator: auto, cpu, gpu
        seed: seed of the initialisation and of the row sampling
    """
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from canon_pl.checks import check_output_folder
    from canon_pl.training import (
        DecoderRowsDataModule,
        MetaSAEAnalysisCallback,
        MetaSAEModule,
        OptimizerSettings,
        SAEExportCallback,
        StepProgressBar,
    )
    from canon_pl.training.meta import META_SAE_SETTINGS

    check_meta_options(k=k, steps=steps, batch_size=batch_size, tokens=tokens, baseline_steps=baseline_steps, lr=lr,
                       d_sae=d_sae, floor_steps=floor_steps, d_sae_per_d_in=d_sae_per_d_in, out=out)
    rows = DecoderRowsDataModule(sae, width=width, batch_size=batch_size, seed=seed)
    n_rows = rows.rows.shape[0]
    n_meta = meta_width(n_rows, rows.d_in, d_sae, d_sae_per_d_in, sweep_d_sae_per_d_in, floor_steps)
    out_dir = Path(out) if out else check_output_folder(RunLayout("checkpoints").meta_sae(n_rows))
    L.seed_everything(seed, verbose=False)
    settings = dataclasses.replace(META_SAE_SETTINGS, k=k, encoder_bias=encoder_bias)
    module = MetaSAEModule(d_in=rows.d_in, d_sae=n_meta, sae=settings, optimizer=OptimizerSettings(lr=lr),
                           b_dec_init=b_dec_init, init_seed=seed, export_dir=str(out_dir))
    trainer = L.Trainer(
        default_root_dir=out_dir, max_steps=steps, accelerator=accelerator, devices=1,
        val_check_interval=min(steps, 500), check_val_every_n_epoch=None, num_sanity_val_steps=0,
        logger=CSVLogger(out_dir, name=RunLayout.LOGS), enable_checkpointing=False, log_every_n_steps=min(steps, 20),
        callbacks=[StepProgressBar(), SAEExportCallback(str(out_dir)),
                   MetaSAEAnalysisCallback(data, tokens, ce, baseline_steps, dirpath=str(out_dir),
                                           floor_steps=floor_steps,
                                           sweep_d_sae_per_d_in=sweep_d_sae_per_d_in)],
    )
    trainer.fit(module, rows)
    print(f"meta-SAE of {n_rows} latents ({n_meta} meta-latents, k={k}) written to {out_dir}")
    return 0


def check_meta_options(*, k: int, steps: int, batch_size: int, tokens: int, baseline_steps: int, lr: float,
                       d_sae: int | None, floor_steps: int | None, d_sae_per_d_in: float | None,
                       out: str | None) -> None:
    """The meta-SAE's numbers and output folder, refused (one error naming the option) before anything is read."""
    from canon_pl.checks import check_counts, check_output_folder, check_positive

    check_counts(**{"--k": k, "--steps": steps, "--batch_size": batch_size, "--tokens": tokens})
    check_counts(0, **{"--baseline_steps": baseline_steps})
    check_positive(**{"--lr": lr})
    if d_sae is not None:
        check_counts(**{"--d_sae": d_sae})
    if floor_steps is not None:
        check_counts(0, **{"--floor_steps": floor_steps})
    if d_sae_per_d_in is not None:
        check_positive(**{"--d_sae_per_d_in": d_sae_per_d_in})
    if d_sae and d_sae_per_d_in:
        raise SettingError("give --d_sae or --d_sae_per_d_in, not both")
    if out:
        check_output_folder(out)


def meta_width(n_rows: int, d_in: int, d_sae: int | None, d_sae_per_d_in: float | None,
               sweep_d_sae_per_d_in: list[float] | None, floor_steps: int | None) -> int:
    """The meta-SAE's width for a base of ``n_rows`` decoder rows of ``d_in``: ``d_sae``, else ``d_sae_per_d_in`` x
    ``d_in``, else the paper's ratio (``n_rows / 21``); it and every width of the sweep checked against the base
    before any training."""
    from canon_pl.checks import check_positive
    from canon_pl.meta import check_meta_width

    n_meta = max(1, round(d_sae_per_d_in * d_in)) if d_sae_per_d_in else d_sae or max(1, round(n_rows / 21))
    check_meta_width(n_rows, n_meta)
    for multiple in sweep_d_sae_per_d_in or []:  # refused before any training, not after the meta-SAE
        check_positive(**{"--sweep_d_sae_per_d_in": multiple})
        check_meta_width(n_rows, max(1, round(multiple * d_in)))
    if sweep_d_sae_per_d_in and floor_steps == 0:
        raise SettingError("a width sweep trains as long as the floors; drop --floor_steps 0")
    return n_meta
