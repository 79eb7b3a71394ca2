"""``canon-pl pipeline --config configs/pipeline_smollm2.yaml``: the paper's study at small scale, stage by stage."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from canon_pl.errors import CanonError
from canon_pl.study.stage_times import estimate_left, record_stage_time, this_machine
from canon_pl.study.stages import STAGE_NAMES, check_stage_options, reads_back, run_stage, stage_done, stages_of

DESCRIPTION = """Run the study end to end: with a calibrate: section first score every instrument on a
known-answer world (canon-pl calibrate), then capture the activation cache when the family trains on one (canon-pl
cache), train the family (lightning fit), stitch every adjacent pair with its cross-seed control (canon-pl stitch),
train a meta-SAE on the widest member (canon-pl meta-sae), collect latent statistics for the family and the
meta-SAE (canon-pl stats), with a matryoshka: section train a Matryoshka SAE whose prefixes are the family's widths
and stitch its prefixes the same way, and write <run>/report.md with its figures. Each stage is the same command a
researcher runs by hand; a stage whose outputs already exist is skipped, and an interrupted training resumes from
its last checkpoint, so re-running the pipeline continues where it stopped."""

MATRYOSHKA_KEYS = {"control_seeds", "fit_args", "meta_sae", "stitch_tokens"}
"""A ``matryoshka:`` section (a Matryoshka SAE of the widest width beside the family, :mod:`canon_pl.commands.
matryoshka`): ``control_seeds`` (its seed controls, default [1]), ``fit_args`` (extra ``lightning fit`` arguments),
``meta_sae`` (train the meta-SAE on its widest level too, default true), ``stitch_tokens`` (held-out tokens its
prefixes are stitched on; default the stitch section's)."""


RELEASE_KEYS = {"name", "ids", "model", "revision"}
"""A ``release:`` section (the study on a SAELens release's SAEs, no training): ``canon-pl family --from_release``."""


def load_pipeline_yaml(path: Path, below: tuple[Path, ...] = ()) -> Any:
    """The YAML at ``path``; with ``base: <pipeline config>``, that config's keys with this one's over them (a
    section is replaced whole, not merged), so an arm of the study states only what it changes."""
    import yaml

    from canon_pl.io import CheckpointError

    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f"{path}: not a pipeline config ({type(err).__name__}: {err})") from err
    if not isinstance(config, dict) or "base" not in config:
        return config
    base = Path(str(config["base"]))
    if base.resolve() in {p.resolve() for p in (*below, path)}:
        raise CheckpointError(f"{path}: base: {base} leads back to itself; name a config without that base")
    return {**load_pipeline_yaml(base, (*below, path)), **{k: v for k, v in config.items() if k != "base"}}


def read_pipeline_config(path: Path) -> dict[str, Any]:
    import yaml

    from canon_pl.io import CheckpointError

    config = load_pipeline_yaml(path)
    if isinstance(config, dict) and "release" in config:
        return _release_config(config, path)
    try:
        fit_config = Path(config["fit_config"])
        fit = yaml.safe_load(fit_config.read_text())
        run = Path(fit["trainer"]["default_root_dir"])
        max_steps = int(fit["trainer"]["max_steps"])
        widths = [int(w) for w in fit["model"]["init_args"]["widths"]]
        data = fit.get("data") or {}
        cache_path = (data.get("init_args") or {}).get("path") if str(data.get("class_path", "")).endswith(
            "ActivationShardDataModule") else None
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a pipeline config ({type(err).__name__}: {err}); it needs fit_config, "
                              f"pointing at a family config with trainer.default_root_dir, trainer.max_steps and "
                              f"model.init_args.widths") from err
    if cache_path is not None and not isinstance(config.get("cache"), dict):
        raise CheckpointError(f"{path}: the family config trains on the activation cache {cache_path}; add a cache: "
                              f"section (config: a fit config whose data captures the activations, tokens, val_tokens)")
    check_stage_options(config, path)
    check_reference_seconds(config, path)
    check_committed_results(config, path)
    check_matryoshka_section(config, fit, path)
    check_fit_arguments(config, fit, path)
    return {**config, "run": run, "max_steps": max_steps, "widths": widths, "cache_path": cache_path, "release": None}


def check_fit_arguments(cfg: dict[str, Any], fit: dict[str, Any], path: Path) -> None:
    """The fit configs the pipeline will train, with their ``fit_args``, parsed and instantiated (no training, no
    data read) before stage 1: the family's, and the Matryoshka's derived from it. A bad argument is one error now,
    not at stage 7 after an hour of work."""
    import contextlib
    import io
    import logging
    import tempfile
    import warnings

    import yaml

    from canon_pl.errors import is_user_error
    from canon_pl.cli.lightning import run_lightning_cli
    from canon_pl.commands.matryoshka import matryoshka_fit_config
    from canon_pl.errors import find_cause
    from canon_pl.io import CheckpointError

    runs = [("fit_args", fit, cfg.get("fit_args") or [])]
    if cfg.get("matryoshka") is not None:
        section = cfg["matryoshka"]
        runs.append(("matryoshka.fit_args", matryoshka_fit_config(fit, Path(tempfile.gettempdir()),
                                                                  section.get("control_seeds", [1])),
                     section.get("fit_args") or []))
    for name, config, args in runs:
        if not isinstance(args, list):
            raise CheckpointError(f"{path}: {name} must be a list of lightning fit arguments, got {args!r}")
        with tempfile.TemporaryDirectory() as scratch:
            config = {**config, "trainer": {**config.get("trainer", {}), "default_root_dir": scratch}}
            config_file = Path(scratch) / "fit.yaml"
            config_file.write_text(yaml.safe_dump(config, sort_keys=False))
            said = io.StringIO()
            logging.disable(logging.INFO)  # Lightning's start-up lines ("Seed set to 0", ...) are not the stage's
            try:
                with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # the arguments as given, then a CPU trainer: this machine's accelerators are the fit's business
                    run_lightning_cli(["--config", str(config_file), *map(str, args), "--trainer.accelerator", "cpu",
                                       "--trainer.devices", "1", "--trainer.strategy", "auto"], run=False)
            except (SystemExit, Exception) as err:  # noqa: BLE001 - any refusal of the arguments, said in one line
                cause = None if isinstance(err, SystemExit) else find_cause(err, is_user_error)
                lines = [line for line in said.getvalue().splitlines() if "error" in line.lower()]
                reason = (f"{type(cause).__name__}: {cause}" if cause is not None else
                          lines[-1].strip() if lines else f"{type(err).__name__}: {err}")
                raise CheckpointError(f"{path}: the {'Matryoshka' if name.startswith('matryoshka') else 'family'}'s "
                                      f"fit config with {name} {args} is refused: {reason}") from None
            finally:
                logging.disable(logging.NOTSET)


def _release_config(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """A pipeline config whose family is a SAELens release (``release:`` and ``run:``, no ``fit_config``)."""
    from canon_pl.io import CheckpointError

    release = config["release"]
    if not isinstance(release, dict) or not release.get("name") or set(release) - RELEASE_KEYS:
        raise CheckpointError(f"{path}: release must be a mapping with name (a SAELens release) and optionally "
                              f"{', '.join(sorted(RELEASE_KEYS - {'name'}))}; got {release!r}")
    if not config.get("run") or "fit_config" in config:
        raise CheckpointError(f"{path}: a release pipeline names its family folder with run: (and has no fit_config)")
    if "matryoshka" in config:
        raise CheckpointError(f"{path}: matryoshka: trains a Matryoshka SAE beside a family trained here (it reuses "
                              f"the family's fit config); a release pipeline has none, so leave the section out")
    check_stage_options(config, path)
    return {**config, "run": Path(config["run"]), "max_steps": None, "widths": None, "cache_path": None}


def fill_widths(cfg: dict[str, Any]) -> None:
    """A release's widths (and the default meta width, the widest) once its family folder exists."""
    from canon_pl.io import load_family

    if cfg["widths"] is None and reads_back(lambda: load_family(cfg["run"])):
        cfg["widths"] = list(load_family(cfg["run"]).widths)
    if cfg.get("meta_width") is None and cfg["widths"]:
        cfg["meta_width"] = int(cfg["widths"][-1])


def check_matryoshka_section(cfg: dict[str, Any], fit: dict[str, Any], path: Path) -> None:
    """A ``matryoshka:`` section: a mapping of :data:`MATRYOSHKA_KEYS` (or empty: every default), refused before any
    stage runs, the fit config it derives from the family's (``fit``, parsed) checked too (a BatchTopK family of two
    widths or more)."""
    from canon_pl.commands.matryoshka import matryoshka_fit_config
    from canon_pl.io import CheckpointError

    if "matryoshka" not in cfg:
        return
    section = cfg["matryoshka"] = cfg["matryoshka"] or {}
    if not isinstance(section, dict) or set(section) - MATRYOSHKA_KEYS:
        raise CheckpointError(f"{path}: matryoshka must be a mapping of {', '.join(sorted(MATRYOSHKA_KEYS))}; got "
                              f"{section!r}")
    seeds = section.get("control_seeds", [1])
    if not (isinstance(seeds, list) and all(isinstance(s, int) for s in seeds)):
        raise CheckpointError(f"{path}: matryoshka.control_seeds must be a list of init seeds, got {seeds!r}")
    tokens = section.get("stitch_tokens")
    if tokens is not None and not (isinstance(tokens, int) and tokens > 0):
        raise CheckpointError(f"{path}: matryoshka.stitch_tokens must be a positive number of tokens, got {tokens!r}")
    matryoshka_fit_config(fit, Path("."), seeds)


def time_left_line(stage: str, timings: dict[str, float], to_come: tuple[str, ...] | list[str],
                   reference: dict[str, float]) -> str:
    """After ``stage``: its time, and the estimate of the stages ``to_come`` from the config's ``reference_seconds``
    scaled by this machine's pace so far (:func:`canon_pl.study.stage_times.estimate_left`)."""
    line = f"  {stage}: {timings[stage]:.0f} s"
    estimate = estimate_left(reference, timings, list(to_come))
    if to_come and estimate is not None:
        left, pace = estimate
        line += (f"; about {left / 60:.0f} min left ({pace:.2f}x the reference machine's times so far; the stages "
                 f"skipped as done take none)")
    return line


COMMITTED_RESULTS = ("ladder_results", "width_l0_results", "matryoshka_results")
"""Keys naming committed results the report reads (a ladder's rungs, a width x L0 evaluation, a Matryoshka
comparison): paths, refused before any stage runs when they are not."""


def check_committed_results(cfg: dict[str, Any], path: Path) -> None:
    """Each of :data:`COMMITTED_RESULTS` the config sets is a path (text); a Matryoshka comparison the report will
    read (no ``matryoshka:`` stage to write it) reads back now, not after the study's other stages."""
    from canon_pl.io import CheckpointError
    from canon_pl.study.matryoshka_results import read_comparison

    for key in COMMITTED_RESULTS:
        if key in cfg and not isinstance(cfg[key], str):
            raise CheckpointError(f"{path}: {key} must be a path (committed results the report reads), got {cfg[key]!r}")
    committed = cfg.get("matryoshka_results")
    if committed is not None and "matryoshka" not in cfg and Path(committed).is_file():
        read_comparison(committed)


def check_reference_seconds(cfg: dict[str, Any], path: Path) -> None:
    """``reference_seconds``: a mapping of study stages to positive seconds, refused before any stage runs."""
    from canon_pl.io import CheckpointError

    reference = cfg.get("reference_seconds")
    if reference is None:
        return
    if not isinstance(reference, dict) or not all(
            stage in STAGE_NAMES and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            for stage, value in reference.items()):
        raise CheckpointError(f"{path}: reference_seconds must map study stages ({', '.join(STAGE_NAMES)}) to positive "
                              f"seconds, got {reference!r}")


def stage_table(timings: dict[str, float], total: float, fit_time: dict[str, Any] | None) -> str:
    """The stages that ran, with seconds and share of the whole; the fit's parts (``fit_time.json``, when its
    config has the ``FitTimeBreakdown`` callback) as indented rows under it."""
    from canon_pl.training.timing import fit_time_table

    lines = [f"{'stage':<60} {'time':>10} {'share':>6}"]
    for stage, seconds in timings.items():
        lines.append(f"{stage:<60} {seconds:>8.1f} s {seconds / max(total, 1e-9):>6.1%}")
        if stage == "fit" and fit_time is not None:
            lines += ["  of which (share of the fit):", fit_time_table(fit_time, indent="    ")]
    return "\n".join(lines)


def pipeline(*, config: str, device: str | None = None) -> int:
    """Run the study stage by stage, skipping the stages whose outputs exist.

    Args:
        config: pipeline config (YAML), e.g. configs/pipeline_smollm2.yaml
        device: device for the analysis stages (default: cuda when a GPU is present)
    """
    from canon_pl.checks import check_device
    from canon_pl.training.timing import read_fit_time

    device = check_device(device)
    cfg = read_pipeline_config(Path(config))
    meta = cfg.get("meta_sae") or {}
    cfg["meta_sae"] = {k: v for k, v in meta.items() if k != "width"}
    cfg["meta_width"] = int(meta["width"]) if meta.get("width") else None
    fill_widths(cfg)
    started = time.monotonic()
    timings: dict[str, float] = {}
    order = [stage.name for stage in stages_of(cfg)]
    machine = this_machine(device)
    for i, stage in enumerate(order, 1):
        fill_widths(cfg)
        if stage_done(stage, cfg):
            print(f"[{i}/{len(order)}] {stage}: done already, skipped", flush=True)
            continue
        print(f"[{i}/{len(order)}] {stage} ...", flush=True)
        t0 = time.monotonic()
        try:
            code = run_stage(stage, cfg, device)
        except CanonError as err:
            print(f"canon-pl pipeline: error: {err}", file=sys.stderr)
            code = 2
        timings[stage] = round(time.monotonic() - t0, 1)
        if code != 0:
            print(f"canon-pl pipeline: stage {stage!r} failed (exit {code}); fix the cause and re-run: finished "
                  f"stages are kept and skipped", file=sys.stderr)
            return code
        if stage != "report":
            record_stage_time(cfg["run"], stage, timings[stage], machine)
        print(time_left_line(stage, timings, order[i:], cfg.get("reference_seconds") or {}), flush=True)
    total = time.monotonic() - started
    print(stage_table(timings, total, read_fit_time(cfg["run"]) if "fit" in timings else None))
    print(f"pipeline finished in {total / 60:.1f} min ({json.dumps(timings)}); report: {cfg['run'] / 'report.md'}")
    print(f"open it in the viewer: streamlit run apps/viewer.py -- --checkpoints {cfg['run'].parent}")
    return 0


__all__ = ["load_pipeline_yaml", "pipeline", "read_pipeline_config"]
