"""The command line: ``canon-pl`` and ``lightning`` (LightningCLI: ``fit``, ``validate``, ...) plus canon-pl's own
subcommands (:data:`COMMANDS`, one typed function each in ``canon_pl/commands/``); ``canon-pl --help`` lists them all.

- :mod:`canon_pl.cli.parse` makes each command's parser from its function's signature and docstring;
- :mod:`canon_pl.cli.lightning` is LightningCLI with canon-pl's defaults (``fit``, ``validate``).

The ``lightning`` console script is this same entry point, so ``lightning fit --config configs/<name>.yaml`` works as
the README says. Lightning itself (2.x) installs no ``lightning`` script (only ``fabric``), so nothing of Lightning's
is shadowed; a test checks that this stays true of the installed Lightning. ``canon-pl fit`` is the same command.

``lightning fit --config configs/sae_synthetic.yaml`` trains and checkpoints; ``canon-pl export --ckpt X --out D``
turns a Lightning checkpoint into a portable export.
"""

from __future__ import annotations

import sys
from typing import Any

from canon_pl.errors import find_cause, is_user_error


COMMANDS = ("export", "cache", "synth", "calibrate", "stitch", "meta-sae", "stats", "evaluate", "family", "pipeline", "ladder", "view")
"""canon-pl's own subcommands, each a typed function ``<name>`` (dashes as underscores) in
``canon_pl/commands/<name>.py`` beside the module's ``DESCRIPTION``; the signature and docstring make its command line
(:mod:`canon_pl.cli.parse`). A command module imports torch and Lightning only inside its function, so that
``canon-pl <name> --help`` answers at once."""


def command_module(name: str) -> Any:
    """The module of subcommand ``name`` (imported on demand: ``canon-pl --help`` stays fast)."""
    import importlib

    return importlib.import_module(f"canon_pl.commands.{name.replace('-', '_')}")


def command_function(name: str) -> Any:
    """The typed function of subcommand ``name`` (``meta-sae`` -> ``canon_pl.commands.meta_sae.meta_sae``)."""
    return getattr(command_module(name), name.replace("-", "_"))


def run_subcommand(name: str, argv: list[str]) -> int:
    """``canon-pl <name> ARGV``: its function's parser over ``argv``, then the function."""
    from canon_pl.cli.parse import run_command

    return run_command(command_function(name), argv, name, command_module(name).DESCRIPTION)


LIGHTNING_COMMANDS = {
    "fit": "train an SAE, an SAE family or a meta-SAE from a config (LightningCLI; --help lists every setting)",
    "validate": "one evaluation pass of a config's model over its validation data",
}
"""LightningCLI's subcommands that canon-pl's modules support (they have no test or predict step)."""
UNSUPPORTED_LIGHTNING = ("test", "predict")


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
    print("usage: canon-pl [--trust-code] COMMAND [options]   (canon-pl COMMAND --help for a command's options)\n\n"
          "commands:")
    for name in names:
        print(f"  {name:<{width}}  {command_summary(name)}")
    print(f"\n{TRUST_CODE_FLAG}: let this command import the module an export names for an architecture that is not "
          f"built in and that no installed package declares (only for files you trust: importing runs its code)")


TRUST_CODE_FLAG = "--trust-code"
"""Before the command: this process may import the module an export names (``CANON_PL_TRUST_CODE=1``)."""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == TRUST_CODE_FLAG:
        import os

        from canon_pl.sae.registry import TRUST_CODE_ENV

        os.environ[TRUST_CODE_ENV] = "1"
        args = argv = args[1:]
    try:
        if not args or args[0] in ("-h", "--help"):
            print_overview()
            return 0 if args else 2
        if args[0] in COMMANDS:
            return run_subcommand(args[0], args[1:])
        if args[0] in UNSUPPORTED_LIGHTNING:
            print(f"canon-pl: error: {args[0]}: canon-pl's modules have no {args[0]} step; 'validate' measures a "
                  f"config's model on its held-out data, and 'canon-pl evaluate' an exported family", file=sys.stderr)
            return 2
        from canon_pl.cli.lightning import run_lightning_cli

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
    return find_cause(err, is_user_error)

