"""The meta-SAE's base-width ladder (a ladder config's ``bases:`` section, ``canon-pl ladder --bases``).

Is the study's meta-SAE result (no excess over the anisotropy-matched floors on a 2,304-row base) a property of
narrow bases? Bases of growing width (2,304, 4,608, 9,216 latents) are trained with the family's settings to **equal
firings per latent** (steps proportional to width: the study's 2,304 member at its 1,500 steps, 4,608 at 3,000, 9,216
at 6,000), then meta-SAEs are trained on each base's decoder rows **that moved** from their initialisation (cosine
< 0.7 to their initial row: rows that never trained say nothing about learned structure) at the paper's two ratios,
21 base rows per meta-latent and 3 x d_in meta-latents, each read against all four floors
(:data:`canon_pl.meta.analysis.FLOOR_NAMES`). One committed JSON per base (``<results>/base_<width>.json``).

Rule (:func:`base_ladder_verdict`): *supported* when FVE minus the highest floor, at 21 rows per meta-latent, grows by
at least ``GROWTH_PER_DOUBLING`` per doubling of the base or reaches ``TARGET_EXCESS`` at the widest base;
*refuted* when it stays within ``FLAT_BAND`` of 0 at every base; *inconclusive* otherwise.
"""

from __future__ import annotations

import math
import time
from datetime import date
from pathlib import Path
from typing import Any

from canon_pl.errors import SettingError
from canon_pl.study.ladder_results import BASE, base_ladder_verdict, finished_bases

BASE_KEYS = {"widths", "reference_steps", "reference_width", "meta_steps", "meta_batch_size", "meta_lr", "k",
             "rows_per_meta", "per_d_in", "moved_tau"}
"""``bases:``: ``widths`` (base widths), ``reference_steps`` / ``reference_width`` (equal firings per latent: a base
of width w trains ``reference_steps * w / reference_width`` steps; default the pipeline's max_steps and widest width),
the meta-SAEs' ``meta_steps``, ``meta_batch_size``, ``meta_lr``, ``k``, ``rows_per_meta`` (21) and ``per_d_in`` (3),
and ``moved_tau`` (0.7: a row moved when its cosine to its initial row is below it)."""

def check_bases_section(section: Any, path: Path) -> dict[str, Any] | None:
    """The ``bases:`` section with its defaults, refused before any work when malformed."""
    if section is None:
        return None
    if not isinstance(section, dict) or set(section) - BASE_KEYS or "widths" not in section:
        raise SettingError(f"{path}: bases must be a mapping with widths (and optionally "
                           f"{', '.join(sorted(BASE_KEYS - {'widths'}))}); got {section!r}")
    widths = section["widths"]
    if not (isinstance(widths, list) and widths and all(isinstance(w, int) and w > 0 for w in widths)
            and sorted(set(widths)) == widths):
        raise SettingError(f"{path}: bases.widths must be increasing positive widths, e.g. [2304, 4608, 9216]; got "
                           f"{widths!r}")
    out = {"meta_steps": 1000, "meta_batch_size": 1024, "meta_lr": 1e-3, "k": 4, "rows_per_meta": 21.0,
           "per_d_in": 3.0, "moved_tau": 0.7, "reference_steps": None, "reference_width": None, **section}
    for key in ("meta_steps", "meta_batch_size", "k"):
        if not isinstance(out[key], int) or out[key] <= 0:
            raise SettingError(f"{path}: bases.{key} must be a positive integer, got {out[key]!r}")
    for key in ("meta_lr", "rows_per_meta", "per_d_in"):
        if not isinstance(out[key], (int, float)) or not math.isfinite(out[key]) or out[key] <= 0:
            raise SettingError(f"{path}: bases.{key} must be a positive number, got {out[key]!r}")
    if not isinstance(out["moved_tau"], (int, float)) or not 0 < out["moved_tau"] < 1:
        raise SettingError(f"{path}: bases.moved_tau must lie strictly between 0 and 1, got {out['moved_tau']!r}")
    return out


def base_steps(cfg: Any, width: int) -> int:
    """Training steps of a base of ``width`` latents: equal firings per latent with the reference."""
    bases = cfg.bases
    steps = bases["reference_steps"] or cfg.pipeline["max_steps"]
    reference = bases["reference_width"] or max(cfg.pipeline["widths"])
    return max(int(round(steps * width / reference)), 1)


def base_file(cfg: Any, width: int) -> Path:
    return cfg.results / f"base_{width}.json"


def measure_base(cfg: Any, export: Path, width: int, steps: int, device: str) -> dict[str, Any]:
    """Meta-SAEs on the moved rows of the base exported at ``export``, at both ratios, each with all floors."""
    import torch

    from canon_pl.io import initial_decoder, load_sae
    from canon_pl.meta.analysis import meta_width_sweep
    from canon_pl.meta.decomposition import decoder_rows
    from canon_pl.metrics.reconstruction import explained_variance_of
    from canon_pl.stitching.classify import row_cosines
    from canon_pl.training.analysis_data import cache_activations

    bases = cfg.bases
    sae = load_sae(export, device)
    rows = decoder_rows(sae)
    initial = initial_decoder(export)
    if initial is None:
        raise SettingError(f"{export} does not record its init seed: the rows that moved cannot be told apart")
    initial = initial.to(rows.device)
    moved = row_cosines(rows, initial) < bases["moved_tau"]
    n_moved = int(moved.sum())
    d_in = rows.shape[1]
    if n_moved < 2 * bases["rows_per_meta"]:
        raise SettingError(f"only {n_moved} of the {width} rows of {export} moved from their initialisation (cosine "
                           f"< {bases['moved_tau']}): too few for a meta-SAE; train the base longer")
    widths = sorted({max(int(round(n_moved / bases["rows_per_meta"])), 1),
                     min(int(round(bases["per_d_in"] * d_in)), n_moved)})
    x = cache_activations(cfg.pipeline["cache_path"], cfg.tokens, sae.d_in, sae.cfg.model_id, sae.cfg.hook_point)
    with torch.no_grad():
        ev, l0 = explained_variance_of(sae, x.to(device))
    sweep = meta_width_sweep(rows[moved], initial[moved], widths, bases["k"], bases["meta_steps"],
                             bases["meta_batch_size"], bases["meta_lr"], seed=0)
    for entry in sweep:
        floors = {k: v for k, v in entry["floors"].items() if isinstance(v, float)}
        entry["highest_floor"] = max(floors.values()) if floors else None
        entry["excess_over_highest_floor"] = (entry["fve"] - entry["highest_floor"]) if floors else None
    return {"width": width, "steps": steps, "tokens": steps * cfg.batch_size,
            "firings_per_latent": steps * cfg.batch_size * int(sae.cfg.k or 0) / width,
            "ev_held_out": ev, "l0_held_out": l0, "rows_moved": n_moved, "rows_moved_fraction": n_moved / width,
            "meta": sweep}


def climb_bases(cfg: Any, device: str) -> int:
    """Train each base without a committed result (resumable), measure it, commit ``base_<width>.json``."""
    from canon_pl.commands.ladder_fit import family_at, fit_to, ladder_fit_config
    from canon_pl.io import read_family_manifest
    from canon_pl.io.atomic import atomic_write_json

    if cfg.bases is None:
        raise SettingError("this ladder config has no bases: section (the meta-SAE's base-width ladder)")
    for width in cfg.bases["widths"]:
        if base_file(cfg, width).is_file():
            BASE.read(base_file(cfg, width), "; delete it to measure the base again")
            print(f"base {width}: committed, skipped", flush=True)
            continue
        steps = base_steps(cfg, width)
        t0 = time.monotonic()
        rung = cfg.rung_folder(steps)  # the training ladder's family at that step already holds this width
        if width in cfg.pipeline["widths"] and family_at(rung, steps):
            export = rung / read_family_manifest(rung)["members"][str(width)]
            print(f"base {width}: the training ladder's member at step {steps}", flush=True)
        else:
            run = cfg.run / f"base_{width}"
            print(f"base {width}: training to step {steps} ({steps * cfg.batch_size / 1e6:.1f}M tokens) in {run}",
                  flush=True)
            fit_to(ladder_fit_config(cfg, steps, run=run, width=width, every=min(250, steps)), run, steps,
                   cfg.fit_args)
            export = run / read_family_manifest(run)["members"][str(width)]
        t1 = time.monotonic()
        measured = measure_base(cfg, export, width, steps, device)
        cfg.results.mkdir(parents=True, exist_ok=True)
        atomic_write_json(base_file(cfg, width), BASE.stamp({
            **measured, "wall_seconds": {"train": round(t1 - t0, 1), "measure": round(time.monotonic() - t1, 1)},
            "date": date.today().isoformat()}))
        print(f"  wrote {base_file(cfg, width)}: " + "; ".join(
            f"{e['n_meta']} meta-latents FVE {e['fve']:.3f} vs highest floor {e['highest_floor']:.3f}"
            for e in measured["meta"]), flush=True)
    return 0


__all__ = ["BASE", "base_ladder_verdict", "check_bases_section", "climb_bases", "finished_bases"]
