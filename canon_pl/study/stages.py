"""The study's stages, one record each: what a stage is called, which config section passes options to which command
function (and which arguments the pipeline sets itself), whether it runs only when its section is there, how the
pipeline knows it is done (its outputs exist, read back and are complete) and how it runs.

``canon-pl pipeline`` walks :data:`STAGES` in order, skipping the done ones; ``canon-pl ladder`` runs the cache stage
of its pipeline the same way; a new stage is one :class:`Stage` here.

A stage function takes the pipeline's resolved config (:func:`canon_pl.commands.pipeline.read_pipeline_config`:
``run``, ``widths``, ``cache_path``, ``meta_width``, ``release`` and the sections) and, for ``run``, the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canon_pl.io.layout import RunLayout

Config = dict[str, Any]


@dataclass(frozen=True)
class Stage:
    """One stage of the study.

    name: what the pipeline prints and ``reference_seconds`` keys.
    run: ``(cfg, device) -> exit code``, the same command function a researcher runs by hand.
    done: ``cfg -> bool``: its outputs exist and read back complete (any error reading them: not done).
    section: the config section whose options go to ``command`` (``None``: the stage takes none).
    command: ``(module, function)`` that ``section``'s options must fit (names and types), refused before stage 1.
    set_by_pipeline: arguments of ``command`` the pipeline passes itself (a section may not set them, except
        those in ``section_may_set``: the pipeline's default, which the section may override).
    optional: runs only when the config has ``section`` (or, with no section, the stage's own name as a key).
    when: ``"trained"`` for a family trained here, ``"release"`` for one assembled from a release, ``None`` both.
    needs_family: done-checks that read the family's widths (a release's are known once it is assembled).
    """

    name: str
    run: Callable[[Config, str], int]
    done: Callable[[Config], bool]
    section: str | None = None
    command: tuple[str, str] | None = None
    set_by_pipeline: tuple[str, ...] = ()
    section_may_set: tuple[str, ...] = ()
    optional: bool = False
    when: str | None = None
    needs_family: bool = True

    @property
    def key(self) -> str:
        """The config key whose presence switches an optional stage on."""
        return self.section or self.name


def _meta_dir(cfg: Config) -> Path | None:
    return RunLayout(cfg["run"]).meta_sae(cfg["meta_width"]) if cfg.get("meta_width") else None


# ----------------------------------------------------------------------------------------------------- run
def _run_calibrate(cfg: Config, device: str) -> int:
    from canon_pl.commands.calibrate import calibrate

    return calibrate(**cfg["calibrate"])


def _run_cache(cfg: Config, device: str) -> int:
    from canon_pl.commands.cache import cache

    return cache(**{**cfg["cache"], "out": str(cfg["cache_path"])})


def _run_family(cfg: Config, device: str) -> int:
    from canon_pl.commands.family import family

    release = cfg["release"]
    return family(from_release=release["name"], ids=release.get("ids"), revision=release.get("revision"),
                  model=release.get("model"), out=str(cfg["run"]))


def _run_fit(cfg: Config, device: str) -> int:
    from canon_pl.cli.lightning import run_lightning_cli
    from canon_pl.commands.derived_config import resume_arguments

    args = ["fit", "--config", str(cfg["fit_config"]), *map(str, cfg.get("fit_args") or [])]
    run_lightning_cli(args + resume_arguments(cfg["run"]))
    return 0


def _run_stitch(cfg: Config, device: str) -> int:
    from canon_pl.commands.stitch import stitch

    return stitch(str(cfg["run"]), device=device, **(cfg.get("stitch") or {}))


def _run_meta_sae(cfg: Config, device: str) -> int:
    from canon_pl.commands.meta_sae import meta_sae

    return meta_sae(sae=str(cfg["run"]), width=cfg["meta_width"], out=str(_meta_dir(cfg)), **cfg["meta_sae"])


def _run_stats(cfg: Config, device: str) -> int:
    from canon_pl.commands.stats import stats

    return stats(run=str(cfg["run"]), device=device, **(cfg.get("stats") or {}))


def _run_meta_stats(cfg: Config, device: str) -> int:
    from canon_pl.commands.stats import stats

    return stats(run=str(_meta_dir(cfg)), device=device)


def _run_evaluate(cfg: Config, device: str) -> int:
    from canon_pl.commands.evaluate import evaluate

    return evaluate(str(cfg["run"]), device=device, **cfg["evaluate"])


def _run_matryoshka(cfg: Config, device: str) -> int:
    from canon_pl.commands.matryoshka import compare_matryoshka

    section = cfg["matryoshka"]
    stitch_options = {**(cfg.get("stitch") or {}),
                      **({"tokens": int(section["stitch_tokens"])} if section.get("stitch_tokens") else {})}
    return compare_matryoshka(run=cfg["run"], fit_config=cfg["fit_config"], control_seeds=section.get("control_seeds"),
                              fit_args=section.get("fit_args"), stitch_options=stitch_options,
                              meta_options=None if section.get("meta_sae") is False else cfg["meta_sae"],
                              device=device)


def _run_report(cfg: Config, device: str) -> int:
    from canon_pl.study.report import write_report

    path = write_report(cfg["run"], _meta_dir(cfg), cfg.get("ladder_results"), cfg.get("width_l0_results"),
                        (cfg.get("calibrate") or {}).get("out"), cfg.get("cache_path"), cfg.get("matryoshka_results"))
    print(f"  report: {path}")
    return 0


# ---------------------------------------------------------------------------------------------------- done
def _calibration_done(cfg: Config) -> bool:
    """A readable ``calibration.json`` in the section's ``out`` folder, from the section's family config."""
    from canon_pl.calibration.report import read_calibration

    section = cfg["calibrate"]
    return read_calibration(section["out"])["config"] == section["config"]


def _cache_done(cfg: Config) -> bool:
    from canon_pl.data import ShardIndex

    if cfg["cache_path"] is None:
        return True  # the family captures its own activations: nothing to cache
    index = ShardIndex.load(cfg["cache_path"])
    wanted = cfg["cache"]
    return (index.split_tokens("train") >= int(wanted["tokens"])
            and index.split_tokens("val") >= int(wanted.get("val_tokens") or 0))


def _family_done(cfg: Config) -> bool:
    from canon_pl.io import load_family
    from canon_pl.io.releases import release_ids

    wanted = (cfg["release"] or {}).get("ids") or release_ids(cfg["release"]["name"])
    return len(load_family(cfg["run"]).widths) == len(wanted)


def _fit_done(cfg: Config) -> bool:
    from canon_pl.io import load_family, training_record

    run, widths = cfg["run"], cfg["widths"]
    return load_family(run).widths == widths and all(
        training_record(run / str(w)).get("global_step") == cfg["max_steps"] for w in widths)


def _stitch_done(cfg: Config) -> bool:
    """Every adjacent pair stitched by the stage: the StitchingCallback's results (on the validation tokens, with a
    global_step) do not count, the stage analyses the pipeline's own held-out set."""
    from canon_pl.stitching import read_stitching_results

    layout, widths = RunLayout(cfg["run"]), cfg["widths"]
    return all("global_step" not in read_stitching_results(layout.stitching_pair(a, b))
               for a, b in zip(widths, widths[1:]))


def _meta_sae_done(cfg: Config) -> bool:
    from canon_pl.meta import read_meta_analysis

    return bool(read_meta_analysis(_meta_dir(cfg)))


def _stats_done(cfg: Config) -> bool:
    from canon_pl.stats import LatentStatistics

    members = LatentStatistics.open(RunLayout(cfg["run"]).stats).members
    return sorted(members) == sorted(map(str, cfg["widths"]))


def _meta_stats_done(cfg: Config) -> bool:
    from canon_pl.stats import LatentStatistics

    return bool(LatentStatistics.open(RunLayout(_meta_dir(cfg)).stats))


def _evaluation_done(cfg: Config) -> bool:
    """A readable evaluation summary with a row for every width of the family."""
    from canon_pl.metrics.summary import read_summary

    rows = read_summary(RunLayout(cfg["run"]).evaluation / "summary.json")["rows"]
    return sorted({r["width"] for r in rows}) == sorted(cfg["widths"])


def _matryoshka_done(cfg: Config) -> bool:
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


STAGES: tuple[Stage, ...] = (
    Stage("calibrate", _run_calibrate, _calibration_done, section="calibrate",
          command=("canon_pl.commands.calibrate", "calibrate"), optional=True, needs_family=False),
    Stage("cache", _run_cache, _cache_done, section="cache", command=("canon_pl.commands.cache", "cache"),
          set_by_pipeline=("out",), needs_family=False),
    Stage("family", _run_family, _family_done, when="release", needs_family=False),
    Stage("fit", _run_fit, _fit_done, when="trained"),
    Stage("stitch", _run_stitch, _stitch_done, section="stitch", command=("canon_pl.commands.stitch", "stitch"),
          set_by_pipeline=("small", "device")),
    Stage("meta-sae", _run_meta_sae, _meta_sae_done, section="meta_sae",
          command=("canon_pl.commands.meta_sae", "meta_sae"), set_by_pipeline=("sae", "width", "out"),
          section_may_set=("width",)),
    Stage("stats", _run_stats, _stats_done, section="stats", command=("canon_pl.commands.stats", "stats"),
          set_by_pipeline=("run", "device")),
    Stage("meta stats", _run_meta_stats, _meta_stats_done),
    Stage("evaluate", _run_evaluate, _evaluation_done, section="evaluate",
          command=("canon_pl.commands.evaluate", "evaluate"), set_by_pipeline=("run", "out", "device"), optional=True),
    Stage("matryoshka", _run_matryoshka, _matryoshka_done, section="matryoshka", optional=True),
    Stage("report", _run_report, lambda cfg: False),  # cheap: always rewritten from the files
)
"""The study's stages in the order they run."""

STAGE_NAMES = tuple(stage.name for stage in STAGES)


def stage_named(name: str) -> Stage:
    """The stage called ``name`` in :data:`STAGES` (a ``KeyError`` naming the known ones otherwise)."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"no study stage {name!r}; the stages are {', '.join(s.name for s in STAGES)}")


def stages_of(cfg: Config) -> tuple[Stage, ...]:
    """The stages a resolved config runs: a release's family is assembled (``family``) instead of trained
    (``fit``); an optional stage runs when the config has its section."""
    kind = "release" if cfg.get("release") else "trained"
    return tuple(stage for stage in STAGES if stage.when in (None, kind)
                 and (not stage.optional or cfg.get(stage.key) is not None))


def reads_back(check: Callable[[], Any]) -> bool:
    """Whether ``check()`` returns something true without raising (an unreadable output: not done)."""
    try:
        return bool(check())
    except Exception:  # noqa: BLE001 - any unreadable output means the stage has to run again
        return False


def stage_done(name: str, cfg: Config) -> bool:
    """Whether stage ``name``'s outputs exist, read back and are complete."""
    stage = stage_named(name)
    if stage.needs_family and (cfg["widths"] is None or cfg.get("meta_width") is None):
        return False  # a release whose family is not assembled yet
    return reads_back(lambda: stage.done(cfg))


def check_stage_options(cfg: Config, path: Path) -> None:
    """Every option of a stage's section must be an argument of its command function, of its type, and every
    required argument the pipeline does not set must be there: refused before any stage runs."""
    import importlib
    import inspect
    import typing

    from canon_pl.checks import fits_type, type_name
    from canon_pl.io import CheckpointError

    for stage in STAGES:
        if stage.command is None:
            continue
        section, (module, name) = stage.section, stage.command
        options = cfg.get(section) or {}
        if not isinstance(options, dict):
            raise CheckpointError(f"{path}: {section} must be a mapping of options, got {options!r}")
        function = getattr(importlib.import_module(module), name)
        parameters = inspect.signature(function).parameters
        allowed = (set(parameters) - set(stage.set_by_pipeline)) | set(stage.section_may_set)
        unknown = sorted(set(options) - allowed)
        command = f"canon-pl {name.replace('_', '-')} --help"
        if unknown:
            raise CheckpointError(f"{path}: {section} has no option {', '.join(unknown)}; it takes "
                                  f"{', '.join(sorted(allowed))} ({command})")
        hints = typing.get_type_hints(function)
        for option, value in options.items():
            if option in hints and fits_type(hints[option], value) is False:
                raise CheckpointError(f"{path}: {section}.{option} must be {type_name(hints[option])}, got {value!r} "
                                      f"({command})")
        required = {p for p, parameter in parameters.items() if parameter.default is inspect.Parameter.empty}
        missing = sorted(required - set(stage.set_by_pipeline) - set(options))
        if cfg.get(section) is not None and missing:
            raise CheckpointError(f"{path}: {section} needs {', '.join(missing)} ({command})")


def run_stage(name: str, cfg: Config, device: str) -> int:
    """Run stage ``name`` by calling its command's function (the same one ``canon-pl <command>`` runs)."""
    return stage_named(name).run(cfg, device)


__all__ = ["STAGES", "STAGE_NAMES", "Stage", "check_stage_options", "reads_back", "run_stage", "stage_done",
           "stage_named", "stages_of"]
