"""Checks every command and module runs on its inputs before any long work, each failing with one clear error.

- :func:`check_counts`: whole-number settings (batch sizes, token counts, steps) at or above a minimum.
- :func:`check_positive` / :func:`check_non_negative`: real settings (learning rates, coefficients, factors); NaN
  and infinity never pass.
- :func:`check_output_folder`: a folder an output will be written into can be created and written there.
- :func:`check_device`: a ``--device`` this machine has.
- :func:`check_fits_in_memory`: tensors a setting asks for fit in this machine's memory, before they are allocated.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from canon_pl.errors import DeviceError, OutputPathError, SettingError


def fits_type(hint: Any, value: Any) -> bool | None:
    """Whether ``value`` (as YAML or JSON gives it) fits the type ``hint`` (``int`` takes no bool, ``float`` only a
    finite number, ``Literal`` one of its values); ``None`` for a hint this check does not read."""
    import numbers
    import types
    import typing

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        verdicts = [fits_type(part, value) for part in typing.get_args(hint)]
        return True if any(verdicts) else (None if None in verdicts else False)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list):
        return isinstance(value, (tuple, list))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return None


def type_name(hint: Any) -> str:
    """``hint`` as a person reads it: ``int``, ``float | null``, ``Literal['a', 'b']``."""
    return getattr(hint, "__name__", None) or str(hint).replace("NoneType", "null").replace("typing.", "")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def check_positive(**settings: Any) -> None:
    """Raise :class:`SettingError` naming the first of ``settings`` (name=value) that is not a finite number > 0."""
    for name, value in settings.items():
        number = _number(value)
        if number is None or number <= 0:
            raise SettingError(f"{name} must be a positive number, got {value!r}")


def check_counts(minimum: int = 1, /, **settings: Any) -> None:
    """Raise :class:`SettingError` naming the first of ``settings`` that is not a whole number >= ``minimum`` (a
    batch size, a number of shards, steps or tokens)."""
    for name, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SettingError(f"{name} must be a whole number >= {minimum}, got {value!r}")


def check_non_negative(**settings: Any) -> None:
    """Raise :class:`SettingError` naming the first of ``settings`` that is not a finite number >= 0."""
    for name, value in settings.items():
        number = _number(value)
        if number is None or number < 0:
            raise SettingError(f"{name} must be a number >= 0, got {value!r}")


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` as a folder that writing can create or fill, checked before any long work (nothing is created).

    Raises :class:`OutputPathError` naming ``option``, the path and what is in the way: a file where the folder or
    one of its parents should be, or a nearest existing folder that is read-only or not writable by this process.
    """
    folder = Path(path)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the nearest existing folder: the one writing creates the rest in
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"lies below the file {existing}"
        raise OutputPathError(f"{option} {folder} {where}, not a folder: pass a folder (it is created if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {folder}: {existing} is not writable (a read-only filesystem or no "
                              f"permission): pass a folder this user can write to")
    return folder


def default_device() -> str:
    """Where analyses run unless told otherwise: ``cuda`` when this machine has a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None, option: str = "--device") -> str:
    """``device`` when this machine has it (``cpu``, ``cuda``, ``cuda:N``, ``mps``), else :class:`DeviceError` naming
    what the machine has; ``None`` (a command's default) is :func:`default_device`. A command states its device
    default as ``None`` so that its ``--help`` answers without importing torch."""
    if device is None:
        return default_device()
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"{option} {device!r} is not a device name ({err}): use cpu, cuda, cuda:N or mps") from err
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"{option} {device}: this machine has no CUDA device (torch {torch.__version__}): "
                              f"use {option} cpu")
        if parsed.index is not None and parsed.index >= count:
            raise DeviceError(f"{option} {device}: this machine has {count} CUDA device(s), cuda:0 to "
                              f"cuda:{count - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{option} {device}: MPS is not available here: use {option} cpu")
    return device


def physical_memory_bytes() -> int | None:
    """This machine's physical memory in bytes (``None`` where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_in_memory(what: str, n_bytes: int, fix: str) -> None:
    """Raise :class:`SettingError` when ``n_bytes`` (what ``what`` needs) exceeds this machine's physical memory, so
    an impossible size is one line naming the bytes and ``fix`` instead of an allocator's traceback minutes later."""
    total = physical_memory_bytes()
    if total is not None and n_bytes > total:
        raise SettingError(f"{what} needs about {n_bytes / 2**30:,.1f} GiB but this machine has "
                           f"{total / 2**30:,.1f} GiB of memory: {fix}")


__all__ = ["check_counts", "check_device", "check_fits_in_memory", "check_non_negative", "check_output_folder",
           "check_positive", "default_device", "physical_memory_bytes"]
