"""``canon-pl pipeline --config configs/pipeline_smollm2.yaml``: the paper's study at small scale, stage by stage."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from canon_pl.checks import default_device
from canon_pl.commands.args import run_command
from canon_pl.errors import CanonError
from canon_pl.io.layout import RunLayout
from canon_pl.stage_times import estimate_left, record_stage_time, this_machine

DESCRIPTION = """Run the study end to end: with a calibrate: section first score every instrument on a
known-answer world (canon-pl calibrate), then capture the activation cache when the family trains on one (canon-pl
cache), train the family (lightning fit), stitch every adjacent pair with its cross-seed control (canon-pl stitch),
train a meta-SAE on the widest member (canon-pl meta-sae), collect latent statistics for the family and the
meta-SAE (canon-pl stats), with a matryoshka: section train a Matryoshka SAE whose prefixes are the family's widths
and stitch its prefixes the same way, and write <run>/report.md with its figures. Each stage is the same command a
researcher runs by hand; a stage whose outputs already exist is skipped, and an interrupted training resumes from
its last checkpoint, so re-running the pipeline continues where it stopped."""

STAGES = ("calibrate", "cache", "fit", "stitch", "meta-sae", "stats", "meta stats", "evaluate", "matryoshka", "report")
"""``calibrate``, ``evaluate`` and ``matryoshka`` run only for a config with a ``calibrate:`` / ``evaluate:`` /
``matryoshka:`` section."""
OPTIONAL_STAGES = ("calibrate", "evaluate", "matryoshka")

MATRYOSHKA_KEYS = {"control_seeds", "fit_args", "meta_sae", "stitch_tokens"}
"""A ``matryoshka:`` section (a Matryoshka SAE of the widest width beside the family, :mod:`canon_pl.commands.
matryoshka`): ``control_seeds`` (its seed controls, default [1]), ``fit_args`` (extra ``lightning fit`` arguments),
``meta_sae`` (train the meta-SAE on its widest level too, default true), ``stitch_tokens`` (held-out tokens its
prefixes are stitched on; default the stitch section's)."""


RELEASE_KEYS = {"name", "ids", "model", "revision"}
"""A ``release:`` section (the study on a SAELens release's SAEs, no training): ``canon-pl family --from_release``."""


def read_pipeline_config(path: Path) -> dict[str, Any]:
    import yaml

    from canon_pl.io import CheckpointError

    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f"{path}: not a pipeline config ({type(err).__name__}: {err})") from err
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

    from canon_pl.cli import _is_user_error, run_lightning_cli
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
                cause = None if isinstance(err, SystemExit) else find_cause(err, _is_user_error)
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


def stages(cfg: dict[str, Any]) -> tuple[str, ...]:
    """The stages of this config: a release's family is assembled (``family``) instead of trained (``fit``); the
    Matryoshka comparison runs when the config has a ``matryoshka:`` section."""
    return tuple("family" if stage == "fit" and cfg["release"] else stage for stage in STAGES
                 if stage not in OPTIONAL_STAGES or cfg.get(stage) is not None)


def fill_widths(cfg: dict[str, Any]) -> None:
    """A release's widths (and the default meta width, the widest) once its family folder exists."""
    from canon_pl.io import load_family

    if cfg["widths"] is None and _readable(lambda: load_family(cfg["run"])):
        cfg["widths"] = list(load_family(cfg["run"]).widths)
    if cfg.get("meta_width") is None and cfg["widths"]:
        cfg["meta_width"] = int(cfg["widths"][-1])


STAGE_OPTIONS = {"calibrate": ("canon_pl.commands.calibrate", "calibrate"), "cache": ("canon_pl.commands.cache", "cache"),
                 "stitch": ("canon_pl.commands.stitch", "stitch"), "meta_sae": ("canon_pl.commands.meta_sae", "meta_sae"),
                 "stats": ("canon_pl.commands.stats", "stats"), "evaluate": ("canon_pl.commands.evaluate", "evaluate")}
"""The config sections that pass options to a stage's command function, and which function."""

STAGE_SET = {"calibrate": (), "cache": ("out",), "stitch": ("small", "device"), "meta_sae": ("sae", "width", "out"), "stats": ("run", "device"),
             "evaluate": ("run", "out", "device")}
"""The arguments the pipeline gives each of those functions itself (a section may not set them)."""


def check_stage_options(cfg: dict[str, Any], path: Path) -> None:
    """Every option of a stage section must be an argument of its command function, refused before any stage runs
    (``width`` of ``meta_sae`` is the pipeline's own: the member to decompose)."""
    import importlib
    import inspect
    import typing

    from canon_pl.checks import fits_type, type_name
    from canon_pl.io import CheckpointError

    for section, (module, name) in STAGE_OPTIONS.items():
        options = cfg.get(section) or {}
        if not isinstance(options, dict):
            raise CheckpointError(f"{path}: {section} must be a mapping of options, got {options!r}")
        parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        allowed = (set(parameters) - set(STAGE_SET[section])) | ({"width"} if section == "meta_sae" else set())
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise CheckpointError(f"{path}: {section} has no option {', '.join(unknown)}; it takes "
                                  f"{', '.join(sorted(allowed))} (canon-pl {name.replace('_', '-')} --help)")
        hints = typing.get_type_hints(getattr(importlib.import_module(module), name))
        for option, value in options.items():
            if option in hints and fits_type(hints[option], value) is False:
                raise CheckpointError(f"{path}: {section}.{option} must be {type_name(hints[option])}, got {value!r} "
                                      f"(canon-pl {name.replace('_', '-')} --help)")
        required = {p for p, parameter in parameters.items() if parameter.default is inspect.Parameter.empty}
        missing = sorted(required - set(STAGE_SET[section]) - set(options))
        if cfg.get(section) is not None and missing:
            raise CheckpointError(f"{path}: {section} needs {', '.join(missing)} (canon-pl "
                                  f"{name.replace('_', '-')} --help)")


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


def _readable(check) -> bool:
    try:
        return bool(check())
    except Exception:  # noqa: BLE001 - any unreadable output means the stage has to run again
        return False


def stage_done(stage: str, cfg: dict[str, Any]) -> bool:
    """Whether ``stage``'s outputs exist, read back and are complete."""
    from canon_pl.io import load_family, training_record
    from canon_pl.io.releases import release_ids
    from canon_pl.meta import read_meta_analysis
    from canon_pl.stats import LatentStatistics
    from canon_pl.stitching import read_stitching_results

    run, widths = cfg["run"], cfg["widths"]
    layout = RunLayout(run)
    if stage not in ("calibrate", "cache", "family") and (widths is None or cfg.get("meta_width") is None):
        return False  # a release whose family is not assembled yet
    meta_dir = layout.meta_sae(cfg["meta_width"]) if cfg.get("meta_width") else None
    def cache_done() -> bool:
        from canon_pl.data import ShardIndex

        if cfg["cache_path"] is None:
            return True  # the family captures its own activations: nothing to cache
        index = ShardIndex.load(cfg["cache_path"])
        wanted = cfg["cache"]
        return (index.split_tokens("train") >= int(wanted["tokens"])
                and index.split_tokens("val") >= int(wanted.get("val_tokens") or 0))

    checks = {
        "calibrate": lambda: calibration_done(cfg["calibrate"]),
        "cache": cache_done,
        "family": lambda: len(load_family(run).widths) == len((cfg["release"] or {}).get("ids") or
                                                               release_ids(cfg["release"]["name"])),
        "fit": lambda: load_family(run).widths == widths and all(
            training_record(run / str(w)).get("global_step") == cfg["max_steps"]
            for w in widths),
        # the StitchingCallback's results (on the validation tokens, with a global_step) do not count: the stage
        # analyses the pipeline's own held-out set
        "stitch": lambda: all("global_step" not in read_stitching_results(layout.stitching_pair(a, b))
                              for a, b in zip(widths, widths[1:])),
        "meta-sae": lambda: read_meta_analysis(meta_dir),
        "stats": lambda: sorted(LatentStatistics.open(layout.stats).members) == sorted(map(str, widths)),
        "meta stats": lambda: LatentStatistics.open(RunLayout(meta_dir).stats),
        "evaluate": lambda: evaluation_done(run, widths),
        "matryoshka": lambda: matryoshka_done(cfg),
        "report": lambda: False,  # cheap: always rewritten from the files
    }
    return _readable(checks[stage])


def calibration_done(section: dict[str, Any]) -> bool:
    """A readable ``calibration.json`` in the section's ``out`` folder, from the section's family config."""
    from canon_pl.calibration.report import read_calibration

    return read_calibration(section["out"])["config"] == section["config"]


def evaluation_done(run: Path, widths: list[int]) -> bool:
    """A readable evaluation summary with a row for every width of the family."""
    from canon_pl.commands.evaluate import read_summary

    rows = read_summary(RunLayout(run).evaluation / "summary.json")["rows"]
    return sorted({r["width"] for r in rows}) == sorted(widths)


def matryoshka_done(cfg: dict[str, Any]) -> bool:
    """Every adjacent pair of the Matryoshka's prefixes stitched (and its meta-SAE analysed, unless switched off)."""
    from canon_pl.io import load_family
    from canon_pl.meta import read_meta_analysis
    from canon_pl.stitching import read_stitching_results

    prefixes = RunLayout(cfg["run"]).matryoshka_prefixes
    widths = load_family(prefixes).widths
    if widths != cfg["widths"]:
        return False
    stitched = all(read_stitching_results(RunLayout(prefixes).stitching_pair(a, b)) for a, b in zip(widths, widths[1:]))
    return stitched and (cfg["matryoshka"].get("meta_sae") is False
                         or bool(read_meta_analysis(RunLayout(prefixes).meta_sae(widths[-1]))))


def run_stage(stage: str, cfg: dict[str, Any], device: str) -> int:
    """Run one stage by calling its command's function (the same one ``canon-pl <command>`` runs)."""
    from canon_pl.cli import run_lightning_cli
    from canon_pl.commands.cache import cache
    from canon_pl.commands.family import family
    from canon_pl.commands.meta_sae import meta_sae
    from canon_pl.commands.stats import stats
    from canon_pl.commands.stitch import stitch
    from canon_pl.report import write_report

    run = cfg["run"]
    meta_dir = RunLayout(run).meta_sae(cfg["meta_width"]) if cfg.get("meta_width") else None
    if stage == "family":
        release = cfg["release"]
        return family(from_release=release["name"], ids=release.get("ids"), revision=release.get("revision"),
                      model=release.get("model"), out=str(run))
    if stage == "calibrate":
        from canon_pl.commands.calibrate import calibrate

        return calibrate(**cfg["calibrate"])
    if stage == "cache":
        return cache(**{**cfg["cache"], "out": str(cfg["cache_path"])})
    if stage == "fit":
        from canon_pl.commands.derived_config import resume_arguments

        args = ["fit", "--config", str(cfg["fit_config"]), *map(str, cfg.get("fit_args") or [])]
        run_lightning_cli(args + resume_arguments(run))
        return 0
    if stage == "stitch":
        return stitch(str(run), device=device, **(cfg.get("stitch") or {}))
    if stage == "meta-sae":
        return meta_sae(sae=str(run), width=cfg["meta_width"], out=str(meta_dir), **cfg["meta_sae"])
    if stage == "stats":
        return stats(run=str(run), device=device, **(cfg.get("stats") or {}))
    if stage == "meta stats":
        return stats(run=str(meta_dir), device=device)
    if stage == "evaluate":
        from canon_pl.commands.evaluate import evaluate

        return evaluate(str(run), device=device, **cfg["evaluate"])
    if stage == "matryoshka":
        from canon_pl.commands.matryoshka import compare_matryoshka

        section = cfg["matryoshka"]
        stitch_options = {**(cfg.get("stitch") or {}),
                          **({"tokens": int(section["stitch_tokens"])} if section.get("stitch_tokens") else {})}
        return compare_matryoshka(run=run, fit_config=cfg["fit_config"], control_seeds=section.get("control_seeds"),
                                  fit_args=section.get("fit_args"), stitch_options=stitch_options,
                                  meta_options=None if section.get("meta_sae") is False else cfg["meta_sae"],
                                  device=device)
    path = write_report(run, meta_dir, cfg.get("ladder_results"), cfg.get("width_l0_results"),
                        (cfg.get("calibrate") or {}).get("out"), cfg.get("cache_path"))
    print(f"  report: {path}")
    return 0


def time_left_line(stage: str, timings: dict[str, float], to_come: tuple[str, ...] | list[str],
                   reference: dict[str, float]) -> str:
    """After ``stage``: its time, and the estimate of the stages ``to_come`` from the config's ``reference_seconds``
    scaled by this machine's pace so far (:func:`canon_pl.stage_times.estimate_left`)."""
    line = f"  {stage}: {timings[stage]:.0f} s"
    estimate = estimate_left(reference, timings, list(to_come))
    if to_come and estimate is not None:
        left, pace = estimate
        line += (f"; about {left / 60:.0f} min left ({pace:.2f}x the reference machine's times so far; the stages "
                 f"skipped as done take none)")
    return line


def check_reference_seconds(cfg: dict[str, Any], path: Path) -> None:
    """``reference_seconds``: a mapping of study stages to positive seconds, refused before any stage runs."""
    from canon_pl.io import CheckpointError

    reference = cfg.get("reference_seconds")
    if reference is None:
        return
    if not isinstance(reference, dict) or not all(
            stage in STAGES and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            for stage, value in reference.items()):
        raise CheckpointError(f"{path}: reference_seconds must map study stages ({', '.join(STAGES)}) to positive "
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


def pipeline(*, config: str, device: str = default_device()) -> int:
    """Run the study stage by stage, skipping the stages whose outputs exist.

    Args:
        config: pipeline config (YAML), e.g. configs/pipeline_smollm2.yaml
        device: device for the analysis stages (cuda when a GPU is present)
    """
    from canon_pl.checks import check_device
    from canon_pl.training.timing import read_fit_time

    check_device(device)
    cfg = read_pipeline_config(Path(config))
    meta = cfg.get("meta_sae") or {}
    cfg["meta_sae"] = {k: v for k, v in meta.items() if k != "width"}
    cfg["meta_width"] = int(meta["width"]) if meta.get("width") else None
    fill_widths(cfg)
    started = time.monotonic()
    timings: dict[str, float] = {}
    order = stages(cfg)
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


def pipeline_command(argv: list[str]) -> int:
    return run_command(pipeline, argv, "pipeline", DESCRIPTION)


__all__ = ["STAGES", "pipeline", "pipeline_command", "read_pipeline_config", "stage_done"]
