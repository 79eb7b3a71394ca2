"""``canon-pl calibrate --config CFG --out DIR``: the study's instruments on a known-answer world and its null twin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from canon_pl.data.world_spec import WorldSpec

DESCRIPTION = """Train a family config whose data is a known-answer world (data.class_path:
canon_pl.training.KnownWorldDataModule) on that world and on its null twin (no hierarchy, no composition, the same
frequencies), run every instrument of the study on both, score each against the truth and write DIR/calibration.json
(canon_pl.calibration.score says what is scored and the pass rules). A trained world is skipped on a re-run; an
interrupted one resumes."""

WORLDS = {"planted": [], "null": ["--data.init_args.world.planted", "false"]}
"""The two worlds a calibration trains on: the config's own, and its null twin."""


def calibrate(*, config: str, out: str, fit_args: list[str] | None = None, held_out_tokens: int = 16_384,
              meta_steps: int = 300, truth: WorldSpec = WorldSpec()) -> int:
    """Score the study's instruments on a known-answer world.

    Args:
        config: a family config (lightning fit) whose data is a KnownWorldDataModule, with seed controls
        out: folder for the two trained families (planted/, null/) and calibration.json
        fit_args: extra lightning fit arguments (e.g. --trainer.max_steps 500)
        held_out_tokens: held-out activations every instrument is run on
        meta_steps: steps of the meta-SAE and of each of its floors
        truth: the world whose true dictionary (and its null twin's) the meta-SAE's power is measured on,
            as a converged SAE as wide as the world would hold it (default: the study's shape, d_in 576)
    """
    from canon_pl.calibration.score import CALIBRATION, CalibrationError, score_family, score_ideal_meta
    from canon_pl.checks import check_counts, check_output_folder
    from canon_pl.cli.lightning import run_lightning_cli
    from canon_pl.commands.derived_config import resume_arguments
    from canon_pl.commands.ladder_fit import family_at
    from canon_pl.io.atomic import atomic_write_json
    from canon_pl.training import KnownWorldDataModule

    check_output_folder(out)
    check_counts(**{"--held_out_tokens": held_out_tokens, "--meta_steps": meta_steps})
    truth = WorldSpec.from_value(truth)
    fit_args = [str(a) for a in fit_args or []]
    planned = run_lightning_cli(["--config", config, *fit_args], run=False)
    if not isinstance(planned.datamodule, KnownWorldDataModule):
        raise CalibrationError(f"{config} does not train on a known-answer world: set data.class_path: "
                               f"canon_pl.training.KnownWorldDataModule (configs/family_known_world.yaml shows how)")
    max_steps = int(planned.trainer.max_steps)
    results: dict[str, Any] = {}
    for world, world_args in WORLDS.items():
        folder = Path(out) / world
        if not family_at(folder, max_steps):
            print(f"calibrate: training the family on the {world} world -> {folder}", flush=True)
            run_lightning_cli(["fit", "--config", config, *fit_args, *world_args,
                               "--trainer.default_root_dir", str(folder), *resume_arguments(folder)])
        print(f"calibrate: scoring every instrument on the {world} world", flush=True)
        results[world] = score_family(folder, held_out_tokens=held_out_tokens, meta_steps=meta_steps)
    print("calibrate: the meta-SAE on the true dictionaries of a planted world and its null twin", flush=True)
    ideal = score_ideal_meta(truth, meta_steps)
    document = CALIBRATION.stamp({"config": config, "fit_args": fit_args, "worlds": results, "ideal_meta": ideal,
                                  "instruments": instrument_table(results, ideal)})
    path = Path(out) / "calibration.json"
    atomic_write_json(path, document)
    for row in document["instruments"]:
        verdict = {True: 'pass', False: 'FAIL', None: 'n/a'}[row['pass']]
        print(f"  {row['instrument']:<58} {row['world']:<8} {row['score']:<70} {verdict}")
    print(f"calibrate: wrote {path}")
    return 0


def instrument_table(results: dict[str, dict[str, Any]], ideal: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per instrument and world: what it scored against the truth and whether that passes its rule."""
    from canon_pl.calibration.score import ideal_meta_rows, instrument_rows

    return [row for world, scored in results.items() for row in instrument_rows(world, scored)] + \
        ideal_meta_rows(ideal)


__all__ = ["WORLDS", "calibrate", "instrument_table"]
