"""``lightning fit|validate`` for canon-pl: LightningCLI with canon-pl's defaults, imported only when a Lightning
subcommand runs (``canon-pl --help`` and canon-pl's own commands never pay for importing Lightning)."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from lightning.pytorch.cli import LightningCLI


class CanonCLI(LightningCLI):
    """LightningCLI with canon-pl's defaults: safe checkpoint loading and overwritable saved configs."""

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        from lightning.pytorch.callbacks import ProgressBar

        from canon_pl.training import StepProgressBar

        given = config.get("callbacks") or []
        given = list(given) if isinstance(given, (list, tuple)) else [given]  # one callback may be given bare
        configured = given + list(callbacks)
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in configured):
            callbacks = [*callbacks, StepProgressBar()]  # a total of max_steps for infinite activation streams
        return super()._instantiate_trainer(config, callbacks)

    def before_instantiate_classes(self) -> None:
        """The run folder (``trainer.default_root_dir``) is stated once, by the training config: a logger given
        without ``save_dir`` (``canon_pl.training.RunCSVLogger`` and the others, as in the shipped configs and the
        presets in ``configs/logger/``) writes into it, and a ``ModelCheckpoint`` without ``dirpath`` into its
        checkpoint folder (:class:`canon_pl.io.layout.RunLayout`)."""
        from canon_pl.checks import check_output_folder
        from canon_pl.io.layout import RunLayout

        from canon_pl.training.loggers import require_tracker

        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.get("trainer")
        loggers = (trainer or {}).get("logger")
        for entry in loggers if isinstance(loggers, list) else [loggers]:
            require_tracker(str(getattr(entry, "class_path", "")))  # before jsonargparse buries the import error
        if trainer is None or not trainer.get("default_root_dir"):
            return
        root = trainer.get("default_root_dir")
        check_output_folder(root, "trainer.default_root_dir")  # before a logger creates anything in it
        for key, field, value in (("logger", "save_dir", str(root)),
                                  ("callbacks", "dirpath", str(RunLayout(root).checkpoints))):
            entries = trainer.get(key)
            for entry in entries if isinstance(entries, list) else [entries]:
                init_args = getattr(entry, "init_args", None)
                wanted = key == "logger" or str(getattr(entry, "class_path", "")).endswith(".ModelCheckpoint")
                if wanted and init_args is not None and field in init_args and init_args.get(field) is None:
                    init_args[field] = value

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in kwargs and kwargs["weights_only"] is None:
            kwargs["weights_only"] = True  # never unpickle arbitrary objects from a checkpoint
        return kwargs

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path`` read by canon-pl's safe reader first: a foreign, truncated or missing file is one line
        naming it, not torch's traceback (which advises ``weights_only=False``)."""
        if self.config.get("subcommand"):
            ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
            if isinstance(ckpt_path, (str, os.PathLike)) and str(ckpt_path) not in ("last", "best", "hpc", "registry"):
                from canon_pl.io.checkpoint import resolve_last_link, safe_torch_load

                resolved = resolve_last_link(ckpt_path)
                if str(resolved) != str(ckpt_path):
                    print(f"canon-pl: {ckpt_path} points at a checkpoint that no longer exists (a run killed while "
                          f"Lightning re-linked it); resuming from the newest whole checkpoint, {resolved}",
                          file=sys.stderr)
                    self.config[self.config.subcommand]["ckpt_path"] = str(resolved)
                safe_torch_load(resolved)
        super()._parse_ckpt_path()


def _quiet_known_warnings() -> None:
    for message in (
        r".*does not have many workers.*",
        r".*IterableDataset.*__len__.*",
        r".*Total length of .* across ranks is zero.*",
        r".*tensorboardX.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def run_lightning_cli(args: list[str] | None = None, run: bool = True) -> CanonCLI:
    """Run LightningCLI with any LightningModule / LightningDataModule given by ``class_path``.

    ``run=False`` only parses and instantiates (``args`` then carry no subcommand).
    """
    import lightning as L
    from jsonargparse import set_parsing_settings

    from canon_pl.sae import SAESettings

    _quiet_known_warnings()
    # ``sae:`` takes any registered architecture's settings (``class_path: ReLUSettings``), or the default's fields.
    set_parsing_settings(subclasses_enabled=[SAESettings])
    return CanonCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )
