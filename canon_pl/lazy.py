"""Packages whose public names import their modules on first use (PEP 562): importing a light submodule
(``canon_pl.io.layout``) or answering ``canon-pl <command> --help`` never imports torch through a package's
``__init__``, and ``from canon_pl.io import load_sae`` works as before."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(namespace: dict[str, Any],
                 exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` (``__getattr__, __dir__ = lazy_exports(globals(), {...})``):
    ``exports`` maps each public name to the module that defines it; a name is imported once, then kept."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__


__all__ = ["lazy_exports"]
