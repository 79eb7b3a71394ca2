"""The command line: ``canon-pl`` and ``lightning`` (LightningCLI: ``fit``, ``validate``, ...) plus canon-pl's own
subcommands (:data:`COMMANDS`, one module each in ``canon_pl/commands/``); ``canon-pl --help`` lists them all.

``lightning fit --config configs/sae_synthetic.yaml`` trains and checkpoints; ``canon-pl export --ckpt X --out D``
turns a Lightning checkpoint into a portable export.
"""

from __future__ import annotations

import errno
import os
import sys
import warnings
from typing import Any

from lightning.pytorch.cli import LightningCLI

from canon_pl.errors import CanonError, find_cause


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
                from canon_pl.io.checkpoint import safe_torch_load

                safe_torch_load(ckpt_path)
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


COMMANDS = ("export", "cache", "stitch", "meta-sae", "stats", "evaluate", "family", "pipeline", "ladder", "view")
"""canon-pl's own subcommands, each a typed function in ``canon_pl/commands/<name>.py`` whose signature and docstring
make its command line (``canon_pl/commands/args.py``)."""


def command_module(name: str) -> Any:
    """The module of subcommand ``name`` (imported on demand: ``canon-pl --help`` stays fast)."""
    import importlib

    return importlib.import_module(f"canon_pl.commands.{name.replace('-', '_')}")


def run_subcommand(name: str, argv: list[str]) -> int:
    """``canon-pl <name> ARGV``."""
    return getattr(command_module(name), f"{name.replace('-', '_')}_command")(argv)


LIGHTNING_COMMANDS = {
    "fit": "train an SAE, an SAE family or a meta-SAE from a config (LightningCLI; --help lists every setting)",
    "validate": "one evaluation pass of a config's model over its validation data",
    "test": "one evaluation pass over the test data (LightningCLI)",
    "predict": "run the model over the predict data (LightningCLI)",
}


def command_summary(name: str) -> str:
    """The one-line summary of a ``canon-pl`` command: what follows the usage in its docstring's first line (the
    command module's docstring for those in ``canon_pl/commands/``)."""
    import ast
    import importlib.util

    if name in LIGHTNING_COMMANDS:
        return LIGHTNING_COMMANDS[name]
    # the docstring read from the source, not by importing the module (which imports torch and Lightning: seconds)
    origin = importlib.util.find_spec(f"canon_pl.commands.{name.replace('-', '_')}").origin
    with open(origin, encoding="utf-8") as source:
        doc = ast.get_docstring(ast.parse(source.read())) or ""
    first = doc.strip().splitlines()[0] if doc.strip() else ""
    return first.split("``: ", 1)[-1].rstrip(".").replace("``", "")


def print_overview() -> None:
    """``canon-pl --help``: every subcommand with its summary."""
    names = [*LIGHTNING_COMMANDS, *COMMANDS]
    width = max(len(name) for name in names)
    print("usage: canon-pl COMMAND [options]   (canon-pl COMMAND --help for a command's options)\n\ncommands:")
    for name in names:
        print(f"  {name:<{width}}  {command_summary(name)}")


WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                          errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG})
"""OS errors that a path or a full disk causes (shown as one line naming the file), not a bug in canon-pl."""


def _is_user_error(err: BaseException) -> bool:
    """Errors caused by the user's input or machine: canon-pl's own (:class:`canon_pl.errors.CanonError`),
    Lightning's configuration errors (an accelerator this machine lacks) and the OS errors of :data:`WRITE_ERRNOS`."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if isinstance(err, OSError):
        return err.errno in WRITE_ERRNOS
    return isinstance(err, (CanonError, MisconfigurationException))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if not args or args[0] in ("-h", "--help"):
            print_overview()
            return 0 if args else 2
        if args[0] in COMMANDS:
            return run_subcommand(args[0], args[1:])
        run_lightning_cli(argv)  # None: LightningCLI reads sys.argv itself
    except Exception as err:  # noqa: BLE001 - re-raised unless it wraps a user error
        cause = _find_user_error(err)
        if cause is None:
            raise
        print(f"canon-pl: error: {type(cause).__name__}: {cause}", file=sys.stderr)
        return 2
    return 0


def _find_user_error(err: BaseException) -> BaseException | None:
    """The user error in ``err``'s chain of causes (jsonargparse wraps errors raised while instantiating)."""
    return find_cause(err, _is_user_error)


if __name__ == "__main__":
    sys.exit(main())
