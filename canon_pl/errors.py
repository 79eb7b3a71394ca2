"""canon-pl's error base: every error a user's settings, files or machine can cause derives from :class:`CanonError`.

Its message names the problem and the fix; the command line (``canon_pl/cli``) shows such an error as one line,
never a traceback. A module that raises a new kind of user error subclasses :class:`CanonError` (and the builtin
error it is, e.g. ``ValueError``), and the command line needs no change. No canon-pl imports: every module may import this.
"""

from __future__ import annotations

import errno
from collections.abc import Callable


class CanonError(Exception):
    """An error the user can fix (a setting, an input file, an output folder, a device); the message says how."""


class SettingError(CanonError, ValueError):
    """A setting outside its allowed range: a batch size, a token count, a learning rate, a coefficient."""


class OutputPathError(CanonError, ValueError):
    """An output folder that cannot be written: a file is in its place, or it lies on a read-only filesystem or
    somewhere this process has no write permission."""


class DeviceError(CanonError, ValueError):
    """A device this machine does not have (``--device cuda:7`` on a machine with one GPU, ``cuda`` without one)."""


def find_cause(err: BaseException, matches: Callable[[BaseException], bool]) -> BaseException | None:
    """The first error in ``err``'s chain (itself, then each ``__cause__`` or else ``__context__``) that
    ``matches``, or ``None``: libraries wrap the error that matters (jsonargparse an instantiation error, datasets a
    decoding error, torch's zip writer the OSError behind its cleanup error)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if matches(current):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                          errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG})
"""OS errors that a path or a full disk causes (shown as one line naming the file), not a bug in canon-pl."""


def is_user_error(err: BaseException) -> bool:
    """Errors caused by the user's input or machine: canon-pl's own (:class:`canon_pl.errors.CanonError`),
    Lightning's configuration errors (an accelerator this machine lacks) and the OS errors of :data:`WRITE_ERRNOS`."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if isinstance(err, OSError):
        return err.errno in WRITE_ERRNOS
    return isinstance(err, (CanonError, MisconfigurationException))


__all__ = ["CanonError", "DeviceError", "OutputPathError", "SettingError", "WRITE_ERRNOS", "find_cause", "is_user_error"]
