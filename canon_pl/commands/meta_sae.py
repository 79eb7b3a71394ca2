"""``canon-pl meta-sae``: train a meta-SAE on the decoder rows of any exported SAE and write its analysis."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from canon_pl.io.layout import RunLayout

DESCRIPTION = """Train a meta-SAE (Leask et al. 2025) on the unit-normalised decoder rows of an SAE and decompose every
latent into meta-latents. Writes <out>/sae.safetensors + cfg.json (the meta-SAE), analysis.json + analysis.safetensors
(docs/meta_sae_results.md) and logs/. Same as `lightning fit` with MetaSAEModule and DecoderRowsDataModule."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="canon-pl meta-sae", description=DESCRIPTION)
    parser.add_argument("--sae", required=True, help="the base SAE: export folder, family folder (+ --width) or .ckpt")
    parser.add_argument("--width", type=int, help="family member to decompose")
    parser.add_argument("--d-sae", type=int, help="meta-latents (default: base width / 21, the paper's base/meta ratio)")
    parser.add_argument("--d-sae-per-d-in", type=float,
                        help="meta-latents as a multiple of d_in instead (the paper's geometry: 2304 = 3 x 768)")
    parser.add_argument("--k", type=int, default=4, help="meta-latents per latent (default 4)")
    parser.add_argument("--steps", type=int, default=2000, help="training batches (default 2000)")
    parser.add_argument("--batch-size", type=int, default=16384, help="rows per batch (default 16384)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--data", help="activations for the base-reconstruction comparison: cache folder or text")
    parser.add_argument("--tokens", type=int, default=8192, help="tokens of --data (default 8192)")
    parser.add_argument("--ce", action="store_true", help="also the spliced next-token loss (text --data only)")
    parser.add_argument("--baseline-steps", type=int, default=300, help="steps per baseline; 0 skips them")
    parser.add_argument("--floor-steps", type=int,
                        help="steps of each floor (the same meta-SAE on random unit rows and on the base's initial "
                             "decoder; default: as many as --steps; 0 skips them)")
    parser.add_argument("--sweep-d-sae-per-d-in", type=float, nargs="+", metavar="MULTIPLE",
                        help="also train meta-SAEs of these widths (multiples of d_in; the paper's is 3) as long as "
                             "the floors, each with its own floors and PCA cap (analysis.json width_sweep)")
    parser.add_argument("--no-encoder-bias", dest="encoder_bias", action="store_false",
                        help="no learned encoder bias (the authors' meta-SAE); pair with --b-dec-init zeros")
    parser.add_argument("--b-dec-init", choices=("mean", "zeros"), default="mean",
                        help="decoder bias at the start: the mean row (default) or 0 (the authors' meta-SAE)")
    parser.add_argument("--out", help="output folder (default checkpoints/meta_sae_<width>)")
    parser.add_argument("--accelerator", default="auto", help="auto, cpu, gpu (default auto)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def meta_sae_command(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from canon_pl.checks import check_counts, check_output_folder, check_positive
    from canon_pl.meta import check_meta_width
    from canon_pl.training import (
        DecoderRowsDataModule,
        MetaSAEAnalysisCallback,
        MetaSAEModule,
        OptimizerSettings,
        SAEExportCallback,
        StepProgressBar,
    )
    from canon_pl.training.meta import META_SAE_SETTINGS

    check_counts(**{"--k": ns.k, "--steps": ns.steps, "--batch-size": ns.batch_size, "--tokens": ns.tokens})
    check_counts(0, **{"--baseline-steps": ns.baseline_steps})
    check_positive(**{"--lr": ns.lr})
    if ns.d_sae is not None:
        check_counts(**{"--d-sae": ns.d_sae})
    if ns.floor_steps is not None:
        check_counts(0, **{"--floor-steps": ns.floor_steps})
    if ns.d_sae_per_d_in is not None:
        check_positive(**{"--d-sae-per-d-in": ns.d_sae_per_d_in})
    if ns.out:
        check_output_folder(ns.out)
    data = DecoderRowsDataModule(ns.sae, width=ns.width, batch_size=ns.batch_size, seed=ns.seed)
    n_rows = data.rows.shape[0]
    if ns.d_sae and ns.d_sae_per_d_in:
        print("canon-pl meta-sae: error: give --d-sae or --d-sae-per-d-in, not both", file=sys.stderr)
        return 2
    if ns.d_sae_per_d_in:
        d_sae = max(1, round(ns.d_sae_per_d_in * data.d_in))
    else:
        d_sae = ns.d_sae or max(1, round(n_rows / 21))
    check_meta_width(n_rows, d_sae)
    for multiple in ns.sweep_d_sae_per_d_in or []:  # refused before any training, not after the meta-SAE
        check_positive(**{"--sweep-d-sae-per-d-in": multiple})
        check_meta_width(n_rows, max(1, round(multiple * data.d_in)))
    if ns.sweep_d_sae_per_d_in and ns.floor_steps == 0:
        print("canon-pl meta-sae: error: a width sweep trains as long as the floors; drop --floor-steps 0",
              file=sys.stderr)
        return 2
    out = Path(ns.out) if ns.out else check_output_folder(RunLayout("checkpoints").meta_sae(n_rows))
    L.seed_everything(ns.seed, verbose=False)
    settings = dataclasses.replace(META_SAE_SETTINGS, k=ns.k, encoder_bias=ns.encoder_bias)
    module = MetaSAEModule(d_in=data.d_in, d_sae=d_sae, sae=settings, optimizer=OptimizerSettings(lr=ns.lr),
                           b_dec_init=ns.b_dec_init, init_seed=ns.seed, export_dir=str(out))
    trainer = L.Trainer(
        default_root_dir=out, max_steps=ns.steps, accelerator=ns.accelerator, devices=1,
        val_check_interval=min(ns.steps, 500), check_val_every_n_epoch=None, num_sanity_val_steps=0,
        logger=CSVLogger(out, name=RunLayout.LOGS), enable_checkpointing=False, log_every_n_steps=min(ns.steps, 20),
        callbacks=[StepProgressBar(), SAEExportCallback(str(out)),
                   MetaSAEAnalysisCallback(ns.data, ns.tokens, ns.ce, ns.baseline_steps, dirpath=str(out),
                                           floor_steps=ns.floor_steps,
                                           sweep_d_sae_per_d_in=ns.sweep_d_sae_per_d_in)],
    )
    trainer.fit(module, data)
    print(f"meta-SAE of {n_rows} latents ({d_sae} meta-latents, k={ns.k}) written to {out}")
    return 0
