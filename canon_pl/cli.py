"""The command line: ``canon-pl`` and ``lightning`` (LightningCLI: ``fit``, ``validate``, ...) plus ``export``,
``cache``, ``stitch``, ``meta-sae`` and ``stats``.

``lightning fit --config configs/sae_synthetic.yaml`` trains and checkpoints; ``canon-pl export --ckpt X --out D``
turns a Lightning checkpoint into a portable export.
"""

from __future__ import annotations

import argparse
import errno
import sys
import warnings
from typing import Any

from lightning.pytorch.cli import LightningCLI

from canon_pl.checks import check_counts, check_device, check_output_folder
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

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict[str, Any]:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in kwargs and kwargs["weights_only"] is None:
            kwargs["weights_only"] = True  # never unpickle arbitrary objects from a checkpoint
        return kwargs


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


def export_command(argv: list[str]) -> int:
    """``canon-pl export --ckpt FILE --out DIR``: portable export of an ``SAEModule`` checkpoint."""
    from canon_pl.io import export_sae, load_sae

    parser = argparse.ArgumentParser(prog="canon-pl export", description=export_command.__doc__)
    parser.add_argument("--ckpt", required=True, help="Lightning .ckpt written by SAEModule")
    parser.add_argument("--out", required=True, help="folder for sae.safetensors + cfg.json")
    ns = parser.parse_args(argv)
    try:
        check_output_folder(ns.out)
        sae = load_sae(ns.ckpt)  # activation scale already folded in
    except CanonError as err:
        print(f"canon-pl export: error: {err}", file=sys.stderr)
        return 2
    export_sae(sae, ns.out)
    print(f"exported {ns.ckpt} to {ns.out}")
    return 0


def cache_command(argv: list[str]) -> int:
    """``canon-pl cache --config CFG --out DIR --tokens N``: write the config's activation stream to disk shards."""
    parser = argparse.ArgumentParser(prog="canon-pl cache", description=cache_command.__doc__)
    parser.add_argument("--config", required=True, help="a fit config whose data is an ActivationDataModule")
    parser.add_argument("--out", required=True, help="folder for the shards and index.json")
    parser.add_argument("--tokens", type=int, required=True, help="number of activation vectors to write")
    parser.add_argument("--val-tokens", type=int, default=131_072,
                        help="activations of held-out documents to write as the cache's held-out part, read by "
                             "validation, canon-pl stitch --data and canon-pl meta-sae --data (default 131072; 0 = none)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--device", help="where the LM runs (default: cuda when a GPU is present, else cpu)")
    ns = parser.parse_args(argv)
    check_counts(**{"--tokens": ns.tokens})
    check_counts(0, **{"--val-tokens": ns.val_tokens})
    check_output_folder(ns.out)
    if ns.device:
        check_device(ns.device)
    from canon_pl.training import ActivationDataModule
    from canon_pl.training.cache import write_activation_cache

    data = run_lightning_cli(["--config", ns.config], run=False).datamodule
    if not isinstance(data, ActivationDataModule):
        print(f"canon-pl cache: error: {ns.config} does not use ActivationDataModule", file=sys.stderr)
        return 2
    import torch

    device = ns.device or ("cuda" if torch.cuda.is_available() else "cpu")
    index = write_activation_cache(data, ns.out, ns.tokens, ns.dtype, val_tokens=ns.val_tokens, device=device)
    print(f"wrote {index.split_tokens('train')} training and {index.split_tokens('val')} held-out activations "
          f"({len(index.shards)} shards) to {ns.out}; train on them with "
          f"data.class_path: canon_pl.training.ActivationShardDataModule, data.init_args.path: {ns.out}")
    return 0


def stitch_command(argv: list[str]) -> int:
    from canon_pl.commands.stitch import stitch_command as run

    return run(argv)


def meta_sae_command(argv: list[str]) -> int:
    from canon_pl.commands.meta_sae import meta_sae_command as run

    return run(argv)


def stats_command(argv: list[str]) -> int:
    from canon_pl.commands.stats import stats_command as run

    return run(argv)


def family_command(argv: list[str]) -> int:
    from canon_pl.commands.family import family_command as run

    return run(argv)


def pipeline_command(argv: list[str]) -> int:
    from canon_pl.commands.pipeline import pipeline_command as run

    return run(argv)


COMMANDS = {"export": export_command, "cache": cache_command, "stitch": stitch_command, "meta-sae": meta_sae_command,
            "stats": stats_command, "family": family_command, "pipeline": pipeline_command}


LIGHTNING_COMMANDS = {
    "fit": "train an SAE, an SAE family or a meta-SAE from a config (LightningCLI; --help lists every setting)",
    "validate": "one evaluation pass of a config's model over its validation data",
    "test": "one evaluation pass over the test data (LightningCLI)",
    "predict": "run the model over the predict data (LightningCLI)",
}


def command_summary(name: str) -> str:
    """The one-line summary of a ``canon-pl`` command: what follows the usage in its docstring's first line (the
    command module's docstring for those in ``canon_pl/commands/``)."""
    import importlib

    if name in LIGHTNING_COMMANDS:
        return LIGHTNING_COMMANDS[name]
    function = COMMANDS[name]
    doc = function.__doc__ or importlib.import_module(f"canon_pl.commands.{name.replace('-', '_')}").__doc__ or ""
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
            return COMMANDS[args[0]](args[1:])
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
