"""One writer per run folder: a lock file naming the process that trains into it.

Two ``lightning fit`` runs into the same folder would overwrite each other's checkpoints and leave an export and a
``last.ckpt`` from different runs. The first run writes ``<run>/.canon-pl.lock`` (process id, host, start time); a
second is refused with the folder and the owner named. A lock left by a process that died is stale: on the same host
a dead process id is detected and the lock taken over; a lock from another host is refused with how to remove it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from canon_pl.errors import CanonError
from canon_pl.io.atomic import process_alive
from canon_pl.io.layout import RunLayout

LOCK_FILE = RunLayout.LOCK


class RunFolderLockedError(CanonError, RuntimeError):
    """Another live process is training into the same run folder."""


class RunFolderLock:
    """``acquire()`` / ``release()`` the lock of ``folder``; re-entrant for the process that holds it."""

    def __init__(self, folder: str | os.PathLike,
                 fix: str = "choose another trainer.default_root_dir, wait for that run",
                 what: str = "two runs in one folder overwrite each other's checkpoints") -> None:
        """``fix`` and ``what`` word the refusal for the kind of writer (a training run by default)."""
        self.folder = Path(folder)
        self.fix, self.what = fix, what
        self.path = self.folder / LOCK_FILE
        self.held = False

    def owner(self) -> dict | None:
        """The recorded owner, or ``None`` when there is no readable lock."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunFolderLockedError` naming the folder and the live owner."""
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.owner() or {}
                if owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
                    self.held = True
                    return
                if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not process_alive(owner["pid"]):
                    self.path.unlink(missing_ok=True)  # stale: its process died
                    continue
                where = f"process {owner.get('pid')} on {owner.get('host')}" if owner else "an unreadable lock"
                raise RunFolderLockedError(
                    f"{self.folder} is in use by {where} (lock {self.path}): {self.what}; {self.fix}, or delete the "
                    f"lock if that process is gone") from None
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return
        raise RunFolderLockedError(f"could not take the lock {self.path}: it keeps reappearing; another run is starting")

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.held:
            owner = self.owner() or {}
            if owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
