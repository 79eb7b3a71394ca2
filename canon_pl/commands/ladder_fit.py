"""Training a ladder's family (or one base of its base-width ladder) to a step count with ``lightning fit``, resuming
from the newest whole checkpoint: shared by :mod:`canon_pl.commands.ladder` and :mod:`canon_pl.commands.base_ladder`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canon_pl.errors import CanonError

if TYPE_CHECKING:
    from canon_pl.commands.ladder import LadderConfig

STITCHING_CALLBACK = "StitchingCallback"


def ladder_fit_config(cfg: LadderConfig, steps: int, run: Path | None = None, width: int | None = None,
                      every: int | None = None) -> dict[str, Any]:
    """The family's fit config trained to ``steps`` in the ladder's run folder: validation at the rungs' common
    interval, checkpoints every :attr:`LadderConfig.checkpoint_every` steps (the newest kept), no StitchingCallback
    (each rung's analysis measures the held-out set instead). ``run``, ``width`` and ``every`` (a base of the
    base-width ladder): that folder, one member of that width without seed controls, checkpoints every ``every``
    steps and one validation, at ``steps`` (the base's figures are measured after training: validating a 9,216-wide
    base every 250 steps cost a third of its wall time)."""
    import copy

    from canon_pl.commands.derived_config import drop_callback, move_run_folder

    config = move_run_folder(drop_callback(copy.deepcopy(cfg.family_config), STITCHING_CALLBACK), run or cfg.run)
    trainer = config["trainer"]
    trainer.update(max_steps=steps, val_check_interval=steps if width is not None else math.gcd(*cfg.rungs),
                   check_val_every_n_epoch=None)
    for callback in trainer["callbacks"]:
        if str(callback.get("class_path", "")).endswith("ModelCheckpoint"):
            callback.setdefault("init_args", {}).update(every_n_train_steps=every or cfg.checkpoint_every)
    if width is not None:
        config["model"]["init_args"].update(widths=[int(width)], base_width=int(width), control_seeds=[],
                                            control_widths=None)
    return config


def fit_to(config: dict[str, Any], run: Path, steps: int, fit_args: tuple[str, ...]) -> None:
    """``lightning fit`` of ``config`` (parsed YAML) in ``run`` up to ``steps``, resuming from the newest whole
    checkpoint there; nothing when every member is already exported at ``steps``."""
    import yaml

    from canon_pl.cli.lightning import run_lightning_cli
    from canon_pl.commands.derived_config import resume_arguments

    if family_at(run, steps):
        return
    run.mkdir(parents=True, exist_ok=True)
    config_path = run / f"fit_{steps}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    run_lightning_cli(["fit", "--config", str(config_path), *fit_args, *resume_arguments(run)])
    if not family_at(run, steps):
        raise CanonError(f"training to step {steps} ended without exports at that step in {run}")


def family_at(folder: Path, steps: int) -> bool:
    """Whether ``folder`` holds a family whose every member and control was exported at ``steps``."""
    from canon_pl.io import read_family_manifest, training_record

    try:
        manifest = read_family_manifest(folder)
    except Exception:  # noqa: BLE001 - missing or unreadable: not there
        return False
    names = [*manifest["members"].values(), *manifest["controls"]]
    return bool(names) and all(training_record(folder / n).get("global_step") == steps for n in names)


__all__ = ["STITCHING_CALLBACK", "family_at", "fit_to", "ladder_fit_config"]
