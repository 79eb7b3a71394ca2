"""Lightning's loggers with the run folder as their default ``save_dir``: a training config states its folder once
(``trainer.default_root_dir``) and the logger presets in ``configs/logger/`` compose with any of them.

``save_dir=None`` means the run folder; the command line fills it in before the loggers are built
(:meth:`canon_pl.cli.CanonCLI.before_instantiate_classes`). Built in Python with ``save_dir=None``, a logger writes
below the working directory, as Lightning's do.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from canon_pl.errors import SettingError


class RunCSVLogger(CSVLogger):
    """``metrics.csv`` in ``<save_dir>/<name>/version_N/`` (what the viewer's training curves and the report read)."""

    def __init__(self, save_dir: str | None = None, name: str = "logs", version: int | str | None = None,
                 prefix: str = "", flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir if save_dir is not None else ".", name, version, prefix, flush_logs_every_n_steps)


class RunTensorBoardLogger(TensorBoardLogger):
    """TensorBoard event files in ``<save_dir>/<name>/version_N/`` (needs ``tensorboard``: canon-pl[trackers])."""

    def __init__(self, save_dir: str | None = None, name: str = "tensorboard", version: int | str | None = None,
                 default_hp_metric: bool = False, prefix: str = "", **kwargs: Any) -> None:
        super().__init__(save_dir if save_dir is not None else ".", name=name, version=version,
                         default_hp_metric=default_hp_metric, prefix=prefix, **kwargs)


TRACKER_PACKAGES = {"WandbLogger": "wandb", "TensorBoardLogger": "tensorboard"}
"""Logger class name (its ending) -> the package it needs (both in ``canon-pl[trackers]``)."""


def require_tracker(class_path: str) -> None:
    """One clear error when the logger ``class_path`` needs a tracker package that is not installed (checked by the
    command line before any logger is built, and by the loggers themselves)."""
    import importlib.util

    for ending, package in TRACKER_PACKAGES.items():
        if class_path.endswith(ending) and importlib.util.find_spec(package) is None:
            raise SettingError(f"the logger {class_path.rsplit('.', 1)[-1]} needs {package}, which is not installed: "
                               f"pip install 'canon-pl[trackers]' (or leave its preset out of --config)")


class RunWandbLogger(WandbLogger):
    """Weights & Biases, offline by default: the run goes to ``<save_dir>/wandb/`` until ``wandb sync`` (needs
    ``wandb``: canon-pl[trackers])."""

    def __init__(self, save_dir: str | None = None, project: str | None = "canon-pl", name: str | None = None,
                 offline: bool = True, log_model: bool = False, prefix: str = "", **kwargs: Any) -> None:
        require_tracker(type(self).__name__)
        super().__init__(name=name, save_dir=save_dir if save_dir is not None else ".", offline=offline,
                         project=project, log_model=log_model, prefix=prefix, **kwargs)


RUN_FOLDER_LOGGERS = (RunCSVLogger, RunTensorBoardLogger, RunWandbLogger)

__all__ = ["RUN_FOLDER_LOGGERS", "RunCSVLogger", "RunTensorBoardLogger", "RunWandbLogger", "require_tracker"]
