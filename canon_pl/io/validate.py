"""Reading files as untrusted input: only regular files (a FIFO or device would block a reader for ever), only inside
a confining folder when a reader set one (the viewer), a size limit before parsing, and one clear error (the caller's
own type, naming the file and the fix) for any structural surprise inside a file that parsed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import stat
import time
import zipfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from canon_pl.errors import CanonError
from canon_pl.io.atomic import previous_path


class CheckpointError(CanonError, ValueError):
    """A file that is not a readable canon-pl SAE: corrupt, truncated, foreign or inconsistent."""


MAX_JSON_BYTES = 64 * 1024 * 1024
# What interpreting a parsed document of the wrong shape raises: a key missing, a value of the wrong type, a tensor of
# the wrong shape or dtype.
STRUCTURAL_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, OverflowError,
                     UnicodeDecodeError, EOFError, zipfile.BadZipFile)

_CONFINED_TO: ContextVar[Path | None] = ContextVar("canon_pl_reads_confined_to", default=None)


def inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path``, with every symlink followed, lies in ``root`` (itself resolved) or is ``root``."""
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError):  # a symlink loop, an unreadable component
        return False


@contextlib.contextmanager
def reads_confined_to(root: str | os.PathLike) -> Iterator[None]:
    """Inside the block every canon-pl reader refuses a file that lies, with its symlinks followed, outside ``root``
    (the viewer serves whoever reaches its port: an index or a data file linked out of its folder is never read)."""
    token = _CONFINED_TO.set(Path(root).resolve())
    try:
        yield
    finally:
        _CONFINED_TO.reset(token)


def regular_file(path: str | os.PathLike, error: type[Exception], fix: str = "write it again") -> Path:
    """``path`` when it is a regular file a reader may open: else ``error`` naming it when it is missing, is a FIFO,
    socket, device or folder (opening one blocks for ever or never ends), or lies outside the folder set by
    :func:`reads_confined_to`. ``os.stat`` follows symlinks and never blocks."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise error(f"{path} is missing or unreadable ({err}); {fix}") from err
    if not stat.S_ISREG(mode):
        raise error(f"{path} is not a regular file (a FIFO, socket, device or folder stands in its place): canon-pl "
                    f"reads only regular files; remove it and {fix}")
    root = _CONFINED_TO.get()
    if root is not None and not inside(root, path):
        raise error(f"{path} leads out of {root} (a symlink): only files below that folder are read here; replace "
                    f"the link by the file itself")
    return path


@contextlib.contextmanager
def malformed_as(error: type[Exception], path: str | os.PathLike, fix: str) -> Iterator[None]:
    """Inside the block, a structural error becomes ``error("<path> is malformed (...); <fix>")``; ``error`` itself
    passes through unchanged."""
    try:
        yield
    except error:
        raise
    except STRUCTURAL_ERRORS as err:
        raise error(f"{path} is malformed ({type(err).__name__}: {err}); {fix}") from err


def read_json(path: str | os.PathLike, error: type[Exception], what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON document in ``path``, or ``error`` naming the file when it is missing, larger than ``max_bytes``
    (checked before reading) or not JSON."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise error(f"{path} is not a readable {what} ({err})") from err
    regular_file(path, error, f"write the {what} again")
    if size > max_bytes:
        raise error(f"{path} is {size:,} bytes, more than any {what} canon-pl writes ({max_bytes:,}); refusing to "
                    f"read it")
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise error(f"{path} is not a readable {what} ({type(err).__name__}: {err})") from err


CONSISTENT_READ_ATTEMPTS = 10
"""Reads of an index and its files before a mismatch is called damage rather than a writer between its renames
(about half a second of waits in all)."""


def consistent_read_waits(attempts: int | None = None) -> Iterator[int]:
    """Attempt numbers for a read that a writer between two renames may disturb: after each attempt but the last the
    caller's ``for`` body ran with a mismatch, so this waits a little longer each time before the next."""
    attempts = CONSISTENT_READ_ATTEMPTS if attempts is None else attempts
    for attempt in range(attempts):
        if attempt:
            time.sleep(random.uniform(0.005, 0.02) * attempt)  # let a writer in between finish
        yield attempt


def read_consistent(read_index: Callable[[], dict[str, Any]], data_path_of: Callable[[dict[str, Any]], Path],
                    digest_key: str, error: type[Exception], attempts: int | None = None,
                    fix: str = "write it again",
                    max_bytes: Callable[[dict[str, Any]], int | None] | None = None) -> tuple[dict[str, Any], bytes]:
    """An index document and the bytes of the data file it describes, as one consistent pair: the bytes match the
    SHA-256 the index records under ``digest_key`` (files written before it was recorded are taken as they are).

    Writers rename the data file, then the index, keeping the data file they replace as its previous copy until the
    index is in place (:func:`canon_pl.io.atomic.atomic_paths`): a data file that does not match the index is
    replaced by that copy when it does (a writer killed between the two renames leaves the previous set readable),
    else read again (a writer between its renames now). A mismatch that persists is a corrupt, truncated or foreign
    file: ``error`` names it and ``fix`` (the command that writes it again). ``max_bytes(index)``, when given, is the
    most the data file can hold by what its index says: a larger file is refused before a byte of it is read."""
    for _ in consistent_read_waits(attempts):
        index = read_index()
        path = regular_file(data_path_of(index), error, fix)
        limit = max_bytes(index) if max_bytes is not None else None
        try:
            size = path.stat().st_size
        except OSError as err:
            raise error(f"{path} is missing or unreadable ({err}); {fix}") from err
        if limit is not None and size > limit:
            raise error(f"{path} is {size:,} bytes, more than its index allows ({limit:,}): not the file it describes; "
                        f"{fix}")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise error(f"{path} is missing or unreadable ({err}); {fix}") from err
        expected = index.get(digest_key)
        if expected is None:
            return index, data
        if not isinstance(expected, str):
            raise error(f"the index of {path} is malformed: {digest_key!r} is not a string")
        if hashlib.sha256(data).hexdigest() == expected:
            return index, data
        try:  # a writer that finished meanwhile removes it: then read again
            data = regular_file(previous_path(path), error, fix).read_bytes()
        except (OSError, error):
            data = None
        if data is not None and hashlib.sha256(data).hexdigest() == expected:
            return index, data
    raise error(f"{path} is corrupt: it does not match the checksum recorded for it (truncated, damaged or from "
                f"another run); {fix}")


def expect(condition: bool, error: type[Exception], message: str) -> None:
    """Raise ``error(message)`` unless ``condition``."""
    if not condition:
        raise error(message)


__all__ = ["MAX_JSON_BYTES", "STRUCTURAL_ERRORS", "expect", "inside", "malformed_as", "read_consistent", "read_json",
           "reads_confined_to", "regular_file"]
