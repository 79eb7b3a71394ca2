"""Which files the viewer may read: those inside the folder it was started on, never one a symlink leads out of.

The viewer serves whoever reaches its port, so its folder box and every file it discovers are confined to the
start-up folder (``--checkpoints``) unless it was started with ``--any-folder``.
"""

from __future__ import annotations

import os
from pathlib import Path

from canon_pl.errors import CanonError
from canon_pl.io.validate import inside


class ViewerFolderError(CanonError, ValueError):
    """A folder the viewer was asked to read lies outside the folder it was started on."""


def files_inside(root: str | os.PathLike, pattern: str) -> list[Path]:
    """``root.glob(pattern)`` in sorted order, leaving out every path a symlink leads out of ``root``."""
    root = Path(root)
    return sorted(path for path in root.glob(pattern) if inside(root, path))


def choose_folder(start: str | os.PathLike, asked: str, any_folder: bool = False) -> Path:
    """The folder typed into the viewer's folder box: ``asked`` when it lies below ``start`` (the ``--checkpoints``
    folder) or ``any_folder`` is set; otherwise :class:`ViewerFolderError` naming both and the flag."""
    folder = Path(asked.strip() or str(start)).expanduser()
    if any_folder or inside(start, folder):
        return folder
    raise ViewerFolderError(
        f"{folder} is outside the folder this viewer was started on ({Path(start).resolve()}): it reads only below "
        f"that folder. Restart it on another one (`streamlit run apps/viewer.py -- --checkpoints DIR`) or allow "
        f"every folder (`-- --any-folder`).")
