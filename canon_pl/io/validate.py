"""Reading files as untrusted input: a size limit before parsing, and one clear error (the caller's own type, naming
the file and the fix) for any structural surprise inside a file that parsed."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 64 * 1024 * 1024
# What interpreting a parsed document of the wrong shape raises: a key missing, a value of the wrong type, a tensor of
# the wrong shape or dtype.
STRUCTURAL_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, OverflowError,
                     UnicodeDecodeError, EOFError)


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
    if size > max_bytes:
        raise error(f"{path} is {size:,} bytes, more than any {what} canon-pl writes ({max_bytes:,}); refusing to "
                    f"read it")
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise error(f"{path} is not a readable {what} ({type(err).__name__}: {err})") from err


def expect(condition: bool, error: type[Exception], message: str) -> None:
    """Raise ``error(message)`` unless ``condition``."""
    if not condition:
        raise error(message)


__all__ = ["MAX_JSON_BYTES", "STRUCTURAL_ERRORS", "expect", "malformed_as", "read_json"]
