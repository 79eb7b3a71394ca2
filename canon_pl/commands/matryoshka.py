"""The Matryoshka comparison beside a family (the pipeline's ``matryoshka:`` stage).

One Matryoshka BatchTopK SAE of the family's widest width, whose nested prefixes are the family's other widths, and
the same SAE from other init seeds (its cross-seed controls), trained on the family's data with its steps and
settings (``lightning fit`` on a config derived from the family's); then its prefixes are written as a family with
the other seeds' prefixes as the controls (``canon-pl family --prefixes --prefix_controls``), stitched on the study's
held-out activations exactly as the family is (``canon-pl stitch``), and a meta-SAE is trained on its widest level
(``canon-pl meta-sae``). Everything lands under ``RunLayout.matryoshka`` and ``RunLayout.matryoshka_prefixes``.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

from canon_pl.commands.derived_config import drop_callback, move_run_folder, resume_arguments
from canon_pl.errors import SettingError
from canon_pl.io.layout import RunLayout
from canon_pl.sae import BatchTopKSettings, SAEConfigError
from canon_pl.sae.registry import settings_class

MATRYOSHKA_SETTINGS = "canon_pl.sae.MatryoshkaBatchTopKSettings"
STITCHING_CALLBACK = "StitchingCallback"


def matryoshka_fit_config(family_config: dict[str, Any], run: str | Path, control_seeds: list[int]) -> dict[str, Any]:
    """The family's fit config (parsed YAML of an ``SAEFamilyModule`` with BatchTopK settings) made into the
    Matryoshka's: one width (the widest), ``MatryoshkaBatchTopKSettings`` with the family's options and prefix
    fractions ``[w / widest for the other widths]``, seed controls ``control_seeds`` of that width, the run folder
    ``RunLayout(run).matryoshka`` (checkpoints and logs a family config places by hand are moved there too, never
    the family's); without the ``StitchingCallback`` (one width has no pairs). The data, steps, optimiser, logger and
    other callbacks are the family's."""
    config = copy.deepcopy(family_config)
    try:
        model = config["model"]
        init = model["init_args"]
        widths = sorted(int(w) for w in init["widths"])
    except (KeyError, TypeError, ValueError) as err:
        raise SettingError(f"the Matryoshka comparison needs a family config (model.init_args.widths); {err}") from err
    if len(widths) < 2:
        raise SettingError(f"the Matryoshka comparison needs a family of two widths or more, got {widths}")
    sae = init.get("sae") or {}
    try:
        family_settings = settings_class(sae)
    except SAEConfigError as err:
        raise SettingError(f"the Matryoshka comparison needs a BatchTopK family: {err}") from err
    if family_settings is not BatchTopKSettings:
        raise SettingError(f"the Matryoshka comparison trains a Matryoshka BatchTopK SAE beside a BatchTopK family; "
                           f"this family's SAEs are {family_settings.__name__}")
    sae = (sae.get("init_args") or {}) if "class_path" in sae else {k: v for k, v in sae.items()
                                                                   if k != "architecture"}
    widest = widths[-1]
    seeds = [int(s) for s in control_seeds]
    init.update(widths=[widest], base_width=widest, control_seeds=seeds, control_widths=[widest] if seeds else None,
                sae={"class_path": MATRYOSHKA_SETTINGS,
                     "init_args": {**sae, "prefix_fractions": [w / widest for w in widths[:-1]]}})
    return move_run_folder(drop_callback(config, STITCHING_CALLBACK), RunLayout(Path(run)).matryoshka)


def compare_matryoshka(*, run: str | Path, fit_config: str | Path, control_seeds: list[int] | None = None,
                       fit_args: list[str] | None = None, stitch_options: dict[str, Any] | None = None,
                       meta_options: dict[str, Any] | None = None, device: str = "cpu") -> int:
    """Train (or resume) the Matryoshka SAE and its seed controls beside the family at ``run``, write its prefixes as
    a family, stitch it with the family's ``stitch_options`` and train a meta-SAE on its widest level with
    ``meta_options`` (the family's, without the width sweep; ``None`` skips it)."""
    import yaml

    from canon_pl.cli.lightning import run_lightning_cli
    from canon_pl.commands.family import family
    from canon_pl.commands.meta_sae import meta_sae
    from canon_pl.commands.stitch import stitch
    from canon_pl.io import training_record
    from canon_pl.training.module import control_key

    seeds = [1] if control_seeds is None else [int(s) for s in control_seeds]
    layout = RunLayout(Path(run))
    config = matryoshka_fit_config(yaml.safe_load(Path(fit_config).read_text()), run, seeds)
    widest = int(config["model"]["init_args"]["widths"][0])
    max_steps = int(config["trainer"]["max_steps"])
    members = [str(widest), *(control_key(widest, s) for s in seeds)]
    if not all(training_record(layout.matryoshka / m).get("global_step") == max_steps for m in members):
        layout.matryoshka.mkdir(parents=True, exist_ok=True)
        layout.matryoshka_fit_config.write_text(yaml.safe_dump(config, sort_keys=False))
        args = ["fit", "--config", str(layout.matryoshka_fit_config), *map(str, fit_args or [])]
        run_lightning_cli(args + resume_arguments(layout.matryoshka))  # an interrupted training continues
    shutil.rmtree(layout.matryoshka_prefixes, ignore_errors=True)  # derived from the exports: always rewritten
    code = family(sources=[str(layout.matryoshka / members[0])], prefixes=True,
                  prefix_controls=[str(layout.matryoshka / m) for m in members[1:]],
                  out=str(layout.matryoshka_prefixes))
    if code == 0:
        # the prefixes' paths are monotone by construction: no granularity curve to read there
        options = {k: v for k, v in (stitch_options or {}).items() if k != "granularity"}
        code = stitch(str(layout.matryoshka_prefixes), device=device, **options)
    if code == 0 and meta_options is not None:
        options = {k: v for k, v in meta_options.items() if k != "sweep_d_sae_per_d_in"}
        code = meta_sae(sae=str(layout.matryoshka_prefixes), width=widest,
                        out=str(RunLayout(layout.matryoshka_prefixes).meta_sae(widest)), **options)
    return code


__all__ = ["compare_matryoshka", "matryoshka_fit_config"]
