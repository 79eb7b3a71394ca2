"""Each ``canon-pl`` command is a typed function; its signature and docstring make its command line.

- Parameters before ``*`` are positional arguments (optional when they have a default); keyword-only ones are
  ``--flags`` spelt like the parameter (required when they have no default): ``--ce_points``, the style of
  ``canon-pl fit --trainer.max_steps`` and of the pipeline YAML's stage options, so one spelling works everywhere;
  the dashed spelling (``--ce-points``) is accepted as well.
- ``int``, ``float``, ``str`` (and ``X | None``) parse as that type; ``list[X]`` takes one or more values;
  ``Literal[...]`` gives choices; ``bool`` is a switch (``--x`` when the default is ``False``, ``--no-x`` when it is
  ``True``). ``Annotated[X, "--name"]`` names the flag otherwise (``--from`` for a parameter ``sources``).
- The help of each argument is its entry under ``Args:`` in the docstring, with the default appended.
- ``--config FILE`` takes the options from a YAML mapping (the keys as the flags without ``--``, as the pipeline
  YAML's stage options); flags given beside it override it. A command whose own ``config`` parameter is its config
  file (``pipeline``, ``ladder``) keeps that meaning.

:func:`run_command` parses ``argv``, calls the function and turns a :class:`canon_pl.errors.CanonError` into one
line ``canon-pl <command>: error: ...`` and exit status 2. The pipeline calls the same functions directly.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from canon_pl.errors import CanonError


def _docstring_args(function: Callable[..., Any]) -> dict[str, str]:
    """``{parameter: help}`` from the ``Args:`` section of a Google-style docstring."""
    doc = inspect.getdoc(function) or ""
    if "Args:" not in doc:
        return {}
    helps: dict[str, str] = {}
    current = None
    for line in doc.split("Args:", 1)[1].splitlines():
        if line and not line.startswith(" "):
            break  # the next section
        match = re.match(r"^    (\w+): (.*)$", line)
        if match:
            current = match.group(1)
            helps[current] = match.group(2).strip()
        elif current and line.strip():
            helps[current] += " " + line.strip()
    return helps


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


def command_parser(function: Callable[..., Any], prog: str, description: str | None = None,
                   config: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The ``argparse`` parser of ``function`` (see the module docstring for the rules); ``config`` (a ``--config``
    file's values) become the defaults of the arguments it names."""
    parser = argparse.ArgumentParser(prog=prog, description=description or inspect.getdoc(function))
    if takes_config_file(function):
        parser.add_argument(CONFIG_FLAG, metavar="YAML", help="a YAML file of these options (keys as the flags "
                            "without --, e.g. 'tokens: 8192'); flags given here override it")
    hints = typing.get_type_hints(function, include_extras=True)
    helps = _docstring_args(function)
    for name, parameter in inspect.signature(function).parameters.items():
        kind, flag = _unwrap(hints.get(name, str))
        has_default = parameter.default is not inspect.Parameter.empty
        text = helps.get(name, "")
        if has_default and parameter.default is not None and kind is not bool:
            shown = " ".join(map(str, parameter.default)) if isinstance(parameter.default, list) else parameter.default
            text = f"{text} (default {shown})".strip()
        options: dict[str, Any] = {"help": text}
        if typing.get_origin(kind) is list:
            options.update(nargs="+", type=typing.get_args(kind)[0])
        elif typing.get_origin(kind) is typing.Literal:
            options.update(choices=typing.get_args(kind))
        elif kind is not bool:
            options["type"] = kind
        if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD:
            if has_default:
                options.update(nargs="?", default=parameter.default)
            parser.add_argument(name, **options)
            continue
        flag = flag or "--" + name
        if kind is bool:
            default = bool(parameter.default) if has_default else False
            flag = ("--no_" + flag[2:]) if default else flag
            parser.add_argument(*_spellings(flag), dest=name, action="store_false" if default else "store_true",
                                help=text)
            continue
        if has_default:
            options["default"] = parameter.default
        else:
            options["required"] = True
        parser.add_argument(*_spellings(flag), dest=name, **options)
    for action in parser._actions:  # a --config file's values: defaults, so an argument it gives is no longer required
        if action.dest in (config or {}):
            action.default, action.required = config[action.dest], False
            if not action.option_strings and action.nargs in (None, "+"):
                action.nargs = "?" if action.nargs is None else "*"
    return parser


def takes_config_file(function: Callable[..., Any]) -> bool:
    """Whether ``--config`` is the generic options file (a command whose own ``config`` parameter is its config file,
    as ``pipeline`` and ``ladder``, keeps that meaning)."""
    return "config" not in inspect.signature(function).parameters


def read_command_config(function: Callable[..., Any], path: str, prog: str) -> dict[str, Any]:
    """The options a ``--config`` YAML gives ``function``: a mapping of its parameter names; anything else is refused
    naming the key and the options there are."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as err:
        raise SystemExit(f"{prog}: error: --config {path}: {err}") from None
    values = {} if values is None else values
    known = set(inspect.signature(function).parameters)
    if not isinstance(values, dict):
        raise SystemExit(f"{prog}: error: --config {path} must be a mapping of options, e.g. 'tokens: 8192'")
    unknown = sorted(str(key).replace("-", "_") for key in values if str(key).replace("-", "_") not in known)
    if unknown:
        raise SystemExit(f"{prog}: error: --config {path}: unknown options {', '.join(unknown)}; the options are "
                         f"{', '.join(sorted(known))}")
    return {str(key).replace("-", "_"): value for key, value in values.items()}


def run_command(function: Callable[..., int], argv: list[str], name: str, description: str | None = None) -> int:
    """``canon-pl <name> ARGV``: parse (``--config`` first, the flags over it), call ``function``, and answer a user
    error with one line and exit 2."""
    prog = f"canon-pl {name}"
    config: dict[str, Any] = {}
    if takes_config_file(function):
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument(CONFIG_FLAG)
        given, _ = pre.parse_known_args(argv)
        config = read_command_config(function, given.config, prog) if given.config else {}
    arguments = vars(command_parser(function, prog, description, config).parse_args(argv))
    if takes_config_file(function):
        arguments.pop("config", None)
    try:
        return function(**arguments)
    except CanonError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


__all__ = ["command_parser", "run_command"]
