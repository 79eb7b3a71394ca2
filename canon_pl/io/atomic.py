"""Atomic file writes: a reader sees the old complete file or the new complete one, never half of one.

Each file is written to ``.<name>.<pid>.<random>.tmp`` beside it and renamed into place. A process killed before its
renames leaves such temporaries behind; the next write of the same file removes those whose process is gone.
A set of files (an export, a results file and its arrays, a statistics folder) is renamed file by file, its index
last; the index records every other file's SHA-256. Before the renames each file the set replaces is kept as
``.<name>.previous`` (a hard link, no copy) until the new index is in place, so a reader that finds a file not
matching the index takes the previous file that does: a kill between two renames leaves the previous whole set
readable, never a mix.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from canon_pl.errors import find_cause


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike, digest_key: str | None = None) -> Iterator[list[Path]]:
    """Yield a temporary path beside each of ``paths``; when the block succeeds, fsync every one, then rename them onto
    ``paths`` in the order given (put the file that points at the others, an index or config, last).

    Nothing is renamed until everything is written: a full disk, an exception or a kill while writing leaves every
    previous file untouched, and the temporary files are removed. An ``OSError`` names the file it was writing.
    Until the new index is in place the files it replaces stay beside it (:func:`previous_path`), so a reader of a
    set killed between its renames finds the files its index names. With ``digest_key`` (``paths`` a data file and
    the JSON index recording its SHA-256 under that key) a copy kept by an earlier writer that was killed there is
    kept while it is the one the index names: two kills in a row still leave a readable set.
    """
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(path)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            temps.append(Path(tmp_name))
        try:
            yield temps
        except Exception as err:
            code = _errno_of(err)
            if code is None:
                raise
            names = ", ".join(str(p) for p in targets)
            raise OSError(code, f"could not write {names}: {os.strerror(code)}; the previous files are "
                                f"unchanged") from err
        mode = _mode_for_new_files()
        for path, tmp in zip(targets, temps):
            _fsync(tmp, path)
            os.chmod(tmp, mode)  # mkstemp made it 0600; a file written in place gets what open() would give it
        indexed = _indexed_digest(targets[-1], digest_key) if digest_key and len(targets) == 2 else None
        kept = [_keep_previous(path, indexed) for path in targets[:-1]] if len(targets) > 1 else []
        for folder in {path.parent for path in targets}:
            _fsync_directory(folder)
        for path, tmp in zip(targets, temps):
            os.replace(tmp, path)
        for folder in {path.parent for path in targets}:
            _fsync_directory(folder)
        for previous in kept:  # the new index is in place: nobody needs the previous set any more
            if previous is not None:
                previous.unlink(missing_ok=True)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def _mode_for_new_files() -> int:
    """The permission bits ``open()`` gives a new file in this process: 0666 less the umask (read without changing
    it where /proc says it; else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def previous_path(path: str | os.PathLike) -> Path:
    """Where :func:`atomic_paths` keeps the file of the previous set that ``path``'s new one replaces."""
    path = Path(path)
    return path.parent / f".{path.name}.previous"


INDEX_BYTES = 64 << 20
"""An index larger than this is not read for its digest (the previous copy is then replaced as usual)."""


def _indexed_digest(index: Path, digest_key: str) -> str | None:
    """The digest the index on disk records under ``digest_key`` (``None`` when it has none, is not a small regular
    JSON file, or cannot be read)."""
    try:
        if not index.is_file() or index.stat().st_size > INDEX_BYTES:
            return None
        value = json.loads(index.read_bytes()).get(digest_key)
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) else None


def _keep_previous(path: Path, indexed: str | None = None) -> Path | None:
    """Keep the current ``path`` (if any) as :func:`previous_path` until its set's new index is in place; a copy
    already there whose digest is ``indexed`` (the one the index on disk names) while the current file's is not is
    kept instead (the current file is what a killed writer left)."""
    if not path.is_file():
        return None
    previous = previous_path(path)
    if indexed is not None and previous.is_file() and sha256_file(previous) == indexed != sha256_file(path):
        return previous
    previous.unlink(missing_ok=True)
    try:
        os.link(path, previous)
    except OSError:  # a filesystem without hard links: a copy
        shutil.copy2(path, previous)
    return previous


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` (``.<name>.<pid>.<random>.tmp`` beside it) whose writing process is gone;
    those of a live writer stay. Returns what was removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _own_errno(err: BaseException) -> int | None:
    """An ``OSError``'s errno, or the "os error N" that Rust writers (safetensors) put in their message."""
    if isinstance(err, OSError):
        return err.errno
    found = re.search(r"\(os error (\d+)\)", str(err))
    return int(found.group(1)) if found else None


def _errno_of(err: BaseException) -> int | None:
    """The OS error behind ``err``: its own (:func:`_own_errno`), or one an error raised while cleaning up after it
    (torch's zip writer) hides in its chain."""
    cause = find_cause(err, lambda e: _own_errno(e) is not None)
    return None if cause is None else _own_errno(cause)


def _fsync(tmp: Path, target: Path) -> None:
    try:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except OSError as err:
        raise OSError(err.errno, f"could not write {target}: {err.strerror}; the previous file is unchanged") from err


def _fsync_directory(folder: Path) -> None:
    """Make the renames durable (best effort: some filesystems cannot fsync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success fsync it and rename it onto ``path``.

    On any error the temporary file is removed and ``path`` is left untouched.
    """
    with atomic_paths(path) as (tmp,):
        yield tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
