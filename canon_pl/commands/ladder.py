"""``canon-pl ladder --config configs/ladder_smollm2.yaml``: the study's family trained on, measured at rungs of training.

Does scale close the gap between canon-pl's study and the paper? The family of a pipeline config is trained on past
the study's budget in a run folder of its own, and at each rung (a training step count: 375, 750, 1,500, 3,000,
6,000 steps of 4,096 tokens = 1.5, 3, 6, 12, 24M tokens) every figure of the study's claims is measured on the
held-out activations: each member's explained variance on held-out *and* training tokens (do passes over the cache
overfit?), rows still at their initialisation, and per adjacent pair the novel fraction by definition and by cosine
beside its cross-seed control and the stitched path's peak over its worse endpoint.

Each rung is a resumable job that ends in one small versioned JSON file under ``results:`` (committed to the
repository); a rung whose file exists is never recomputed, and an interrupted rung continues from the newest whole
checkpoint of the ladder's run folder. The curves over all finished rungs are drawn into ``<results>/curves.png``.
"""

from __future__ import annotations

import json
import math
import platform
import re
import shutil
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from canon_pl.commands.ladder_fit import family_at, fit_to, ladder_fit_config
from canon_pl.errors import SettingError
from canon_pl.io.layout import RunLayout
from canon_pl.study.ladder_results import RUNG, finished_rungs, read_rung_file

DESCRIPTION = """Train a pipeline config's family on past the study's budget and measure the study's figures at
each rung of training steps (held-out and training EV, rows at init, novel fractions with their cross-seed controls,
the path's peak), one committed JSON per rung (<results>/rung_<steps>.json) and the curves over the rungs
(<results>/curves.png). A finished rung is never recomputed; an interrupted one resumes from its last checkpoint."""

LADDER_KEYS = {"pipeline", "run", "results", "rungs", "tokens", "fit_args", "bases", "cache", "stop_at_plateau"}
"""A ladder config: ``pipeline`` (the study's pipeline config: its cache and family), ``run`` (the ladder's own run
folder), ``results`` (where rung files go, committed), ``rungs`` (training steps, increasing), ``tokens``
(held-out tokens per analysis, default the pipeline's stitch tokens) and ``fit_args`` (extra ``lightning fit``
arguments), ``bases`` (the meta-SAE's base-width ladder, :mod:`canon_pl.commands.base_ladder`), ``cache`` (a cache
of the ladder's own in place of the pipeline's: ``path`` and the options of ``canon-pl cache``; the family trains
on it and every rung is measured on its held-out part), ``stop_at_plateau`` (stop climbing once two seeds' agreement
has plateaued: :func:`canon_pl.study.ladder_results.consistency_plateau`)."""

RUNGS_FOLDER = "rungs"
"""``<run>/rungs/<steps>/``: the family's exports as they stood at each rung (a family folder, stitched there)."""


@dataclass(frozen=True)
class LadderConfig:
    """A parsed ladder config (see :data:`LADDER_KEYS`) with what it takes from the pipeline config."""

    pipeline: dict[str, Any]
    run: Path
    results: Path
    rungs: tuple[int, ...]
    tokens: int
    fit_args: tuple[str, ...]
    family_config: dict[str, Any]
    batch_size: int
    bases: dict[str, Any] | None = None
    stop_at_plateau: bool = False

    def rung_file(self, steps: int) -> Path:
        return self.results / f"rung_{steps}.json"

    def rung_folder(self, steps: int) -> Path:
        return self.run / RUNGS_FOLDER / str(steps)

    @property
    def checkpoint_every(self) -> int:
        """Checkpoint interval: the largest divisor of every rung that is at most 250 steps (a kill loses less)."""
        common = math.gcd(*self.rungs)
        return max(d for d in range(1, min(common, 250) + 1) if common % d == 0)


def read_ladder_config(path: Path) -> LadderConfig:
    """Parse and check a ladder config before any work (one clear error naming the key and the fix)."""
    import yaml

    from canon_pl.commands.pipeline import read_pipeline_config

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SettingError(f"{path}: not a ladder config ({type(err).__name__}: {err})") from err
    if not isinstance(raw, dict):
        raise SettingError(f"{path}: not a ladder config (a mapping with pipeline, run, results, rungs)")
    if set(raw) - LADDER_KEYS or not {"pipeline", "run", "results", "rungs"} <= set(raw):
        raise SettingError(f"{path}: a ladder config is a mapping with pipeline, run, results, rungs (and optionally "
                           f"tokens, fit_args, bases, cache, stop_at_plateau); got {sorted(raw)}")
    rungs = raw["rungs"]
    if (not isinstance(rungs, list) or not rungs or not all(isinstance(r, int) and not isinstance(r, bool) and r > 0
                                                             for r in rungs) or sorted(set(rungs)) != rungs):
        raise SettingError(f"{path}: rungs must be increasing positive step counts, e.g. [375, 750, 1500]; got "
                           f"{rungs!r}")
    pipeline = read_pipeline_config(Path(raw["pipeline"]))
    if pipeline["release"]:
        raise SettingError(f"{path}: the ladder trains a family; {raw['pipeline']} assembles a release's SAEs")
    family_config = yaml.safe_load(Path(pipeline["fit_config"]).read_text())
    stitch = pipeline.get("stitch") or {}
    tokens = raw.get("tokens", stitch.get("tokens", 131072))
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens <= 0:
        raise SettingError(f"{path}: tokens must be a positive number of held-out tokens, got {tokens!r}")
    if pipeline["cache_path"] is None:
        raise SettingError(f"{path}: the ladder reads the pipeline's activation cache (its training and held-out "
                           f"tokens); {raw['pipeline']}'s family config trains without one")
    fit_args = raw.get("fit_args") or []
    if not isinstance(fit_args, list):
        raise SettingError(f"{path}: fit_args must be a list of lightning fit arguments, got {fit_args!r}")
    if raw.get("cache") is not None:
        pipeline, fit_args = own_cache(raw["cache"], pipeline, fit_args, path)
    run = Path(raw["run"])
    if run.resolve() == Path(pipeline["run"]).resolve():
        raise SettingError(f"{path}: run must be a folder of its own, not the study's {pipeline['run']} (the ladder "
                           f"trains past the study's steps)")
    from canon_pl.commands.base_ladder import check_bases_section

    return LadderConfig(pipeline=pipeline, run=run, results=Path(raw["results"]), rungs=tuple(rungs), tokens=tokens,
                        fit_args=tuple(map(str, fit_args)), family_config=family_config,
                        batch_size=int(family_config["data"]["init_args"]["batch_size"]),
                        bases=check_bases_section(raw.get("bases"), path),
                        stop_at_plateau=_flag(raw.get("stop_at_plateau", False), "stop_at_plateau", path))


def _flag(value: Any, key: str, path: Path) -> bool:
    if not isinstance(value, bool):
        raise SettingError(f"{path}: {key} must be true or false, got {value!r}")
    return value


def own_cache(section: Any, pipeline: dict[str, Any], fit_args: list, path: Path) -> tuple[dict[str, Any], list]:
    """The pipeline config and fit arguments of a ladder with a cache of its own (``section``: ``path`` and the
    options of ``canon-pl cache``): the pipeline's cache stage writes it and the family's data reads it."""
    from canon_pl.study.stages import check_stage_options

    if not isinstance(section, dict) or not isinstance(section.get("path"), str):
        raise SettingError(f"{path}: cache must be a mapping with path (the cache's folder) and the options of "
                           f"canon-pl cache (config, tokens, val_tokens, text, ...); got {section!r}")
    options = {key: value for key, value in section.items() if key != "path"}
    check_stage_options({"cache": options}, path)
    return ({**pipeline, "cache": options, "cache_path": Path(section["path"])},
            ["--data.init_args.path", section["path"], *fit_args])


def train_to(cfg: LadderConfig, steps: int) -> None:
    """Train the ladder's family to ``steps`` (resuming from its newest whole checkpoint) and keep a copy of its
    exports as they stand at that step in :meth:`LadderConfig.rung_folder`."""
    from canon_pl.io import read_family_manifest

    folder = cfg.rung_folder(steps)
    if family_at(folder, steps):
        return
    fit_to(ladder_fit_config(cfg, steps), cfg.run, steps, cfg.fit_args)
    manifest = read_family_manifest(cfg.run)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in [*manifest["members"].values(), *manifest["controls"]]:
        shutil.copytree(cfg.run / name, staging / name)
    shutil.copy2(cfg.run / "family.json", staging / "family.json")
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)  # whole or absent


def measure_rung(cfg: LadderConfig, steps: int, device: str) -> dict[str, Any]:
    """The rung's figures from its family folder: members' EV on held-out and training tokens, L0 and rows at
    init; every adjacent pair stitched (with its control) on the held-out tokens."""
    import torch

    from canon_pl.commands.stitch import stitch
    from canon_pl.io import load_family, load_sae, read_family_manifest
    from canon_pl.metrics.reconstruction import explained_variance_of
    from canon_pl.stitching.classify import stuck_at_init_fraction
    from canon_pl.stitching import read_stitching_results
    from canon_pl.training.analysis_data import cache_activations

    folder = cfg.rung_folder(steps)
    layout = RunLayout(folder)
    family = load_family(folder, device)
    manifest = read_family_manifest(folder)
    widths = family.widths
    shutil.rmtree(layout.stitching, ignore_errors=True)  # a measurement interrupted earlier is made again whole
    stitch(str(folder), data=str(cfg.pipeline["cache_path"]), tokens=cfg.tokens, device=device, granularity=True)
    any_sae = family.saes[widths[0]]
    held_out, training = (cache_activations(cfg.pipeline["cache_path"], cfg.tokens, any_sae.d_in,
                                            any_sae.cfg.model_id, any_sae.cfg.hook_point, split=split).to(device)
                          for split in ("val", "train"))
    members = {}
    names = {**{str(w): (int(w), f) for w, f in manifest["members"].items()},
             **{f: (int(c["width"]), f) for f, c in manifest["controls"].items()}}
    for name, (width, sub) in names.items():
        sae = family.saes[width] if sub == manifest["members"].get(str(width)) else load_sae(folder / sub, device)
        with torch.no_grad():
            ev_held_out, l0 = explained_variance_of(sae, held_out)
            ev_training, _ = explained_variance_of(sae, training)
        members[name] = {"width": width, "folder": sub, "ev_held_out": ev_held_out, "ev_training": ev_training,
                         "l0_held_out": l0, "rows_at_init": stuck_at_init_fraction(folder / sub)}
    pairs = []
    for a, b in zip(widths, widths[1:]):
        s = read_stitching_results(layout.stitching_pair(a, b))
        c, control = s["classes"], s.get("control") or {}
        replicate = control.get("replicate") or {}
        pairs.append({"small": a, "large": b,
                      "novel_definition": c["novel_fraction_definition"],
                      "control_definition": control.get("novel_fraction_definition"),
                      "novel_definition_spread": s.get("spread"),
                      "control_definition_spread": control.get("spread"),
                      "novel_cosine": c["novel_fraction_cosine"],
                      "control_cosine": control.get("novel_fraction_cosine"),
                      "fvu_small": s["fvu_small"], "fvu_large": s["fvu_large"],
                      "path_excess": s["path_excess"], "path_peak_over_worse_endpoint": 1.0 + s["path_excess"],
                      "path_monotone_fraction": s["path_monotone_fraction"],
                      "control_path_excess": control.get("path_excess"),
                      # the other seed of L's width in L's place: against S, and against L (its own control)
                      "replicate_definition": replicate.get("novel_fraction_definition"),
                      "replicate_control_definition": replicate.get("control_novel_fraction_definition"),
                      # Hungarian-matched decoder consistency: S against L, and L against its other seed
                      "consistency": s.get("consistency"), "control_consistency": control.get("consistency"),
                      "granularity": s.get("granularity"), "control_granularity": control.get("granularity")})
    return {"members": members, "pairs": pairs}


def read_rung(path: Path) -> dict[str, Any] | None:
    """A finished rung's document, or ``None`` when there is none (an unreadable file is an error: it is committed
    work, not to be overwritten silently)."""
    if not path.is_file():
        return None
    return read_rung_file(path)


def ladder(*, config: str, device: str | None = None, only: int | None = None, remeasure: bool = False,
           bases: bool = False, draw: bool = False) -> int:
    """Climb the ladder: for each rung without a result file, train to it, measure, write the rung's JSON.

    Args:
        config: ladder config (YAML), e.g. configs/ladder_smollm2.yaml
        device: device for training and the analyses (default: cuda when a GPU is present)
        only: stop after this many new rungs (a resumable piece of a long ladder)
        remeasure: measure committed rungs again with this canon-pl's analyses, from the family as it stood at each
            rung (kept under <run>/rungs/<steps>/; a rung whose family is not kept here is left as committed):
            never trains
        bases: climb the meta-SAE's base-width ladder (the config's bases: section) instead of the training rungs
        draw: only redraw the curves and the summary from the committed rungs (no training, no measurement)
    """
    from canon_pl.checks import check_counts, check_device
    from canon_pl.study.ladder_report import write_ladder_figures
    from canon_pl.study.ladder_results import consistency_plateau
    from canon_pl.study.stages import run_stage, stage_done

    device = check_device(device)
    if only is not None:
        check_counts(**{"--only": only})
    cfg = read_ladder_config(Path(config))
    for steps in cfg.rungs:
        read_rung(cfg.rung_file(steps))  # a damaged committed rung is refused before any work
    if draw:
        figure = write_ladder_figures(finished_rungs(cfg.results), cfg.results) if cfg.results.is_dir() else None
        print(f"redrew {figure}" if figure else f"no committed rung under {cfg.results}")
        return 0
    if remeasure:
        return remeasure_rungs(cfg, device)
    if bases:
        from canon_pl.commands.base_ladder import climb_bases

        if not stage_done("cache", cfg.pipeline):
            run_stage("cache", cfg.pipeline, device)
        climbed = climb_bases(cfg, device)
        write_ladder_figures(finished_rungs(cfg.results), cfg.results)  # the summary gains the bases' section
        return climbed
    todo = [s for s in cfg.rungs if read_rung(cfg.rung_file(s)) is None]
    if only is not None:
        todo = todo[:only]
    print(f"ladder {config}: {len(cfg.rungs) - len(todo)} of {len(cfg.rungs)} rungs committed under {cfg.results}; "
          f"{len(todo)} to climb now", flush=True)
    if todo and not stage_done("cache", cfg.pipeline):
        print("cache (the pipeline's activation cache) ...", flush=True)
        run_stage("cache", cfg.pipeline, device)
    started, done_steps = time.monotonic(), 0
    for i, steps in enumerate(todo, 1):
        eta = ""
        if done_steps:
            rate = (time.monotonic() - started) / done_steps
            eta = f", ETA of the whole ladder {rate * (todo[-1] - _trained_steps(cfg)) / 60:.0f} min"
        print(f"[rung {i}/{len(todo)}] {steps} steps ({steps * cfg.batch_size / 1e6:.1f}M tokens){eta}", flush=True)
        done_steps += climb_rung(cfg, steps, device)
        reached, agreement = consistency_plateau(finished_rungs(cfg.results))
        print(f"  convergence: {agreement}", flush=True)
        if cfg.stop_at_plateau and reached is not None:
            print(f"  two seeds' agreement plateaued at {reached / 1e6:.1f}M tokens: the ladder stops here "
                  f"(stop_at_plateau)", flush=True)
            break
    if not todo and cfg.results.is_dir():
        write_ladder_figures(finished_rungs(cfg.results), cfg.results)
    print(json.dumps({"rungs_committed": [d["steps"] for d in finished_rungs(cfg.results)] if cfg.results.is_dir()
                      else []}))
    return 0


def climb_rung(cfg: LadderConfig, steps: int, device: str) -> int:
    """Train the ladder's run to ``steps`` (from its newest whole checkpoint), measure the rung and commit its
    document (``<results>/rung_<steps>.json``) and the redrawn curves; returns the steps trained now."""
    from canon_pl.io.atomic import atomic_write_json
    from canon_pl.study.ladder_report import write_ladder_figures

    t0 = time.monotonic()
    before = _trained_steps(cfg)
    train_to(cfg, steps)
    t1 = time.monotonic()
    measured = measure_rung(cfg, steps, device)
    t2 = time.monotonic()
    document = RUNG.stamp({
        "steps": steps, "tokens": steps * cfg.batch_size, "batch_size": cfg.batch_size,
        "analysis_tokens": cfg.tokens, "pipeline": str(cfg.pipeline.get("fit_config")),
        **measured,
        "wall_seconds": {"train": round(t1 - t0, 1), "measure": round(t2 - t1, 1), "trained_from_step": before},
        "machine": f"{platform.machine()}, {_cores()} cores, device {device}", "date": date.today().isoformat(),
    })
    cfg.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg.rung_file(steps), document)
    print(f"  wrote {cfg.rung_file(steps)} (train {t1 - t0:.0f} s, measure {t2 - t1:.0f} s)", flush=True)
    write_ladder_figures(finished_rungs(cfg.results), cfg.results)
    return max(steps - before, 0)


def remeasure_rungs(cfg: LadderConfig, device: str) -> int:
    """Measure every committed rung again whose family is kept under :meth:`LadderConfig.rung_folder` (its stitching
    results written anew), keeping the rung's training record; then redraw the curves."""
    from canon_pl.io.atomic import atomic_write_json
    from canon_pl.study.ladder_report import write_ladder_figures

    for steps in cfg.rungs:
        old = read_rung(cfg.rung_file(steps))
        folder = cfg.rung_folder(steps)
        if old is None or not family_at(folder, steps):
            print(f"rung {steps}: {'not committed' if old is None else 'its family is not kept here'}; left as it is")
            continue
        shutil.rmtree(RunLayout(folder).stitching, ignore_errors=True)
        t0 = time.monotonic()
        measured = measure_rung(cfg, steps, device)
        wall = {**old.get("wall_seconds", {}), "measure": round(time.monotonic() - t0, 1)}
        atomic_write_json(cfg.rung_file(steps), RUNG.stamp({**{k: v for k, v in old.items()
                                                               if k not in ("format", "format_version",
                                                                            "canon_pl_version")},
                                                            **measured, "wall_seconds": wall,
                                                            "measured_again": date.today().isoformat()}))
        print(f"rung {steps}: measured again ({wall['measure']:.0f} s)", flush=True)
    write_ladder_figures(finished_rungs(cfg.results), cfg.results)
    return 0


def _trained_steps(cfg: LadderConfig) -> int:
    """How far the ladder's run has trained (its newest whole checkpoint's step; 0 for none)."""
    from canon_pl.io.checkpoint import newest_checkpoint

    newest = newest_checkpoint(cfg.run)
    match = re.search(r"step=(\d+)", newest.name) if newest is not None else None
    return int(match.group(1)) if match else 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


__all__ = ["RUNG", "LadderConfig", "finished_rungs", "ladder", "ladder_fit_config",
           "read_ladder_config"]
