"""canon-pl's error base: every error a user's settings, files or machine can cause derives from :class:`CanonError`.

Its message names the problem and the fix; the command line (``canon_pl/cli.py``) shows such an error as one line,
never a traceback. A module that raises a new kind of user error subclasses :class:`CanonError` (and the builtin
error it is, e.g. ``ValueError``), and the command line needs no change. No imports: every module may import this.
"""

from __future__ import annotations


class CanonError(Exception):
    """An error the user can fix (a setting, an input file, an output folder, a device); the message says how."""


class SettingError(CanonError, ValueError):
    """A setting outside its allowed range: a batch size, a token count, a learning rate, a coefficient."""


class OutputPathError(CanonError, ValueError):
    """An output folder that cannot be written: a file is in its place, or it lies on a read-only filesystem or
    somewhere this process has no write permission."""


class DeviceError(CanonError, ValueError):
    """A device this machine does not have (``--device cuda:7`` on a machine with one GPU, ``cuda`` without one)."""


__all__ = ["CanonError", "DeviceError", "OutputPathError", "SettingError"]
