"""Each ``canon-pl`` command is a typed function; its signature and docstring make its command line (a jsonargparse
parser, as LightningCLI's).

- Parameters before ``*`` are positional arguments (optional when they have a default); keyword-only ones are
  ``--flags`` spelt like the parameter (required when they have no default): ``--ce_points``, the style of
  ``canon-pl fit --trainer.max_steps`` and of the pipeline YAML's stage options, so one spelling works everywhere;
  the dashed spelling (``--ce-points``) is accepted as well.
- ``int``, ``float``, ``str`` (and ``X | None``) parse as that type; ``list[X]`` takes one or more values;
  ``Literal[...]`` gives choices; ``bool`` is a switch (``--x`` when the default is ``False``, ``--no-x`` when it is
  ``True``); a dataclass's fields are nested flags (``--world.d_in 64``). ``Annotated[X, "--name"]`` names the flag otherwise (``--from`` for a parameter ``sources``).
- The help of each argument is its entry under ``Args:`` in the docstring, with the default appended.
- ``--config FILE`` takes the options from a YAML mapping (the keys as the parameters' names, as the pipeline
  YAML's stage options; jsonargparse's ``ActionConfigFile``); flags given after it override it, a key the command
  does not have is refused by name, and ``--print_config`` writes the options as such a file. A command whose own
  ``config`` parameter is its config file (``pipeline``, ``ladder``) keeps that meaning.
- Values are checked against the parameter's type before the command runs (jsonargparse).

:func:`run_command` parses ``argv``, calls the function and turns a :class:`canon_pl.errors.CanonError` into one
line ``canon-pl <command>: error: ...`` and exit status 2. The pipeline calls the same functions directly.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from canon_pl.errors import CanonError

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser


def _docstring_args(function: Callable[..., Any]) -> dict[str, str]:
    """``{parameter: help}`` from the ``Args:`` section of a Google-style docstring (docstring-parser, as
    jsonargparse reads them)."""
    from docstring_parser import parse

    return {param.arg_name: " ".join((param.description or "").split())
            for param in parse(inspect.getdoc(function) or "").params}


def _unwrap(annotation: Any) -> tuple[Any, str | None]:
    """(the type without ``None`` and ``Annotated``, the flag name an ``Annotated`` gives)."""
    flag = None
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extras = typing.get_args(annotation)
        flag = next((e for e in extras if isinstance(e, str) and e.startswith("--")), None)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = kinds[0] if len(kinds) == 1 else str
    return annotation, flag


def _spellings(flag: str) -> list[str]:
    """``--ce_points`` and its dashed alias ``--ce-points`` (just the flag when it has no underscore)."""
    dashed = "--" + flag[2:].replace("_", "-")
    return [flag] if dashed == flag else [flag, dashed]


CONFIG_FLAG = "--config"
"""Every command's YAML of its own options: the keys its flags have (without ``--``), as the pipeline YAML's stage
options; flags on the command line override it."""


def command_parser(function: Callable[..., Any], prog: str, description: str | None = None) -> ArgumentParser:
    """The jsonargparse parser of ``function`` (see the module docstring for the rules)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=prog, description=description or inspect.getdoc(function), exit_on_error=False)
    if takes_config_file(function):
        parser.add_argument(CONFIG_FLAG, action=ActionConfigFile, help="a YAML file of these options (keys as the "
                            "flags without --, e.g. 'tokens: 8192'); flags given after it override it")
    hints = typing.get_type_hints(function, include_extras=True)
    helps = _docstring_args(function)
    for name, parameter in inspect.signature(function).parameters.items():
        kind, flag = _unwrap(hints.get(name, str))
        has_default = parameter.default is not inspect.Parameter.empty
        options: dict[str, Any] = {"help": helps.get(name, "")}
        if has_default:
            options["default"] = parameter.default
        if typing.get_origin(kind) is list:
            options.update(nargs="+", type=typing.get_args(kind)[0])
        elif typing.get_origin(kind) is typing.Literal:
            options.update(choices=typing.get_args(kind))
        elif kind is not bool:
            options["type"] = kind | None if has_default and parameter.default is None else kind
        if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            parser.add_argument(name, **options, **({"nargs": "?"} if has_default else {}))
            continue
        flag = flag or "--" + name
        if dataclasses.is_dataclass(kind):  # its fields as nested flags (--world.d_in 64) or keys under it in --config
            parser.add_argument(flag, type=kind, help=options["help"])
            continue
        if kind is bool:
            default = bool(parameter.default) if has_default else False
            parser.add_argument(*_spellings(("--no_" + flag[2:]) if default else flag), dest=name,
                                action="store_false" if default else "store_true", help=options["help"],
                                default=default)
            continue
        parser.add_argument(*_spellings(flag), dest=name, required=not has_default, **options)
    return parser


def takes_config_file(function: Callable[..., Any]) -> bool:
    """Whether ``--config`` is the generic options file (a command whose own ``config`` parameter is its config file,
    as ``pipeline`` and ``ladder``, keeps that meaning)."""
    return "config" not in inspect.signature(function).parameters


def run_command(function: Callable[..., int], argv: list[str], name: str, description: str | None = None) -> int:
    """``canon-pl <name> ARGV``: parse (a ``--config`` file, the flags after it over it), call ``function``, and
    answer a user error with one line and exit 2."""
    from jsonargparse import ArgumentError

    prog = f"canon-pl {name}"
    try:
        arguments = command_parser(function, prog, description).parse_args(argv).as_dict()
    except ArgumentError as err:  # a value of the wrong type, an unknown option or config key: one line
        print(f"{prog}: error: {' '.join(str(err).split())} (canon-pl {name} --help lists the options)",
              file=sys.stderr)
        return 2
    if takes_config_file(function):
        arguments.pop("config", None)
    try:
        return function(**arguments)
    except CanonError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


__all__ = ["command_parser", "run_command"]
