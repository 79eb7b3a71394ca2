"""canon-pl's JSON documents, stated once: each kind (an export's ``cfg.json``, a family manifest, analysis results,
a statistics index) names its ``format`` and ``format_version``; writers stamp both (and the canon-pl version), and
every reader checks them the same way before it trusts anything else in the file.

A document that names another format, or a newer version than this canon-pl reads, is refused with the kind's own
error type, the file and what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from canon_pl.io.validate import read_json
from canon_pl.version import __version__


@dataclass(frozen=True)
class DocumentKind:
    """One kind of document: ``format`` (``canon_pl.sae``), the ``version`` this code writes and reads up to, what
    to call it in errors (``what``), the error type, ``foreign_hint``: a sentence for a file of another format, and
    ``unstamped_is_v0``: a document with no ``format`` at all is read as version 0 (for a kind canon-pl wrote before
    it stamped it: activation-cache indexes), and ``rebuild``: what an error about a damaged one tells the user to
    do (the command that writes it again)."""

    format: str
    version: int
    what: str
    error: type[Exception]
    foreign_hint: str = ""
    unstamped_is_v0: bool = False
    rebuild: str = "write it again"
    required: tuple[tuple[str, type | tuple[type, ...]], ...] = ()
    """Keys the document must hold, each with its JSON type(s) (``int`` excludes ``bool``)."""

    def stamp(self, document: dict[str, Any]) -> dict[str, Any]:
        """``document`` with ``format``, ``format_version`` and ``canon_pl_version`` (what every writer records)."""
        return {"format": self.format, "format_version": self.version, "canon_pl_version": __version__, **document}

    def check(self, document: Any, path: str | os.PathLike) -> dict[str, Any]:
        """``document`` when it is a dict of this format at a version this code reads (a missing version is 0, what
        canon-pl wrote before it recorded one); else :attr:`error` naming ``path``."""
        if self.unstamped_is_v0 and isinstance(document, dict) and "format" not in document:
            return document
        if not isinstance(document, dict) or document.get("format") != self.format:
            hint = f"; {self.foreign_hint}" if self.foreign_hint else ""
            raise self.error(f"{path} is not a canon-pl {self.what} (no \"format\": \"{self.format}\"){hint}")
        version = document.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise self.error(f"{path} is malformed: \"format_version\" must be an integer; write it again")
        if version > self.version:
            raise self.error(f"{path} has format_version {version}, newer than this canon_pl understands "
                             f"({self.version}); upgrade canon_pl")
        for key, kinds in self.required:
            value = document.get(key)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,))):
                names = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
                raise self.error(f"{path} is malformed: {key!r} must be {names}, got {value!r}; {self.rebuild}")
        return document

    def read(self, path: str | os.PathLike, what_else: str = "") -> dict[str, Any]:
        """Read and :meth:`check` the document at ``path`` (size-limited, one clear error when unreadable);
        ``what_else`` is added to the unreadable-file message (the fix)."""
        return self.check(read_json(Path(path), self.error, f"{self.what}{what_else}"), path)


__all__ = ["DocumentKind"]
