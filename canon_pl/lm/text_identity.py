"""Which text a capture read, to the byte: the digest of its files and the packages that installed them.

A named source is whatever its Debian package installs today: an update of ``python3.11-doc`` changes the documents,
and the study's figures a little, without any setting changing. The identity is recorded in an activation cache's
index (``text_identity``) and stated in the study's report, so two runs can tell whether they read the same text.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

READ_BYTES = 1 << 20
"""Bytes read at a time while hashing a file."""


def package_version(package: str) -> str | None:
    """The installed version of a Debian package (``dpkg-query``), ``None`` when it is not installed or the machine
    has no ``dpkg-query``."""
    query = shutil.which("dpkg-query")
    if query is None:
        return None
    done = subprocess.run([query, "-W", "-f=${Version}", package], capture_output=True, text=True, check=False)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def _digest_files(files: list[str]) -> tuple[str, int]:
    """SHA-256 over the files' bytes in the order they are read (each prefixed by its length, so moving bytes from
    one file to the next changes it) and their total size."""
    digest = hashlib.sha256()
    total = 0
    for path in files:
        size = Path(path).stat().st_size
        digest.update(size.to_bytes(8, "little"))
        with open(path, "rb") as handle:
            while chunk := handle.read(READ_BYTES):
                digest.update(chunk)
        total += size
    return digest.hexdigest(), total


def text_identity(source: str) -> dict[str, Any]:
    """``{"source", "files", "bytes", "sha256", "packages"}`` of a text source (:mod:`canon_pl.lm.text`).

    A named or local source: its files (in the order the capture reads them), their total size and digest, and for
    a named source the version of each package that installs it. ``pydoc-topics``: the digest of the topics and the
    Python version that ships them. A hub dataset: its name only (``files``, ``bytes`` and ``sha256`` are ``None``;
    its revision is the hub's)."""
    from canon_pl.lm.text import NAMED_SOURCES, _local_files

    if source == "pydoc-topics":
        from pydoc_data.topics import topics

        data = "\0".join(topics[key] for key in sorted(topics)).encode()
        return {"source": source, "files": len(topics), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "packages": {"python": platform.python_version()}}
    files = _local_files(source)
    if files is None:
        return {"source": source, "files": None, "bytes": None, "sha256": None, "packages": {}}
    sha256, size = _digest_files(files)
    named = NAMED_SOURCES.get(source)
    packages = {package: package_version(package) for package in named.packages} if named is not None else {}
    return {"source": source, "files": len(files), "bytes": size, "sha256": sha256, "packages": packages}


def identity_text(identity: dict[str, Any] | None) -> str:
    """One line for a report: ``docs: 1,234 files, 32.1 MB, sha256 1a2b3c4d5e6f; python3.11-doc 3.11.2-6+deb12u9``."""
    if not identity:
        return "not recorded (a cache written before canon-pl recorded its text)"
    if identity.get("sha256") is None:
        return f"`{identity['source']}`, a hub dataset (its revision is the hub's; no digest)"
    packages = "; ".join(f"{name} {version or 'not installed'}" for name, version in identity["packages"].items())
    return (f"`{identity['source']}`: {identity['files']:,} files, {identity['bytes'] / 1e6:.1f} MB, sha256 "
            f"{identity['sha256'][:12]}" + (f"; {packages}" if packages else ""))


__all__ = ["identity_text", "package_version", "text_identity"]
