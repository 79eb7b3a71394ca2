"""The Matryoshka comparison as a committed document: what the report's section "Matryoshka prefixes against
independent widths" shows (its tables and its verdict), written by the report of a study that ran its Matryoshka
stage (``make matryoshka``) and read by the report of one that did not (``make main``), which says where it came
from. The comparison trains three more SAEs (about a third of the study's time on 2 CPU cores) and is not one of the
paper's claims, so the one-command study reads it, as it reads the ladder's rungs, instead of recomputing it."""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from canon_pl.errors import SettingError
from canon_pl.io.atomic import atomic_write_text
from canon_pl.io.document import DocumentKind
from canon_pl.study.verdicts import Verdict

COMPARISON = DocumentKind(
    "canon_pl.matryoshka_comparison", 1, "Matryoshka comparison", SettingError,
    rebuild="write it again with `make matryoshka` (the study with its Matryoshka stage)",
    required=(("run", str), ("written", str), ("widths", list), ("control_seeds", list), ("ev_rows", list),
              ("pair_rows", list), ("meta_rows", list), ("verdict", dict)))
"""The report's Matryoshka tables (:func:`canon_pl.study.report.matryoshka_tables`), the verdict on them, and the
run they were measured on."""

VERDICT_KEYS = tuple(f.name for f in fields(Verdict))


def comparison_document(run: str | os.PathLike, tables: dict[str, Any], verdict: Verdict) -> dict[str, Any]:
    """The document for ``tables`` and ``verdict`` of the Matryoshka beside the family at ``run``."""
    return COMPARISON.stamp({"run": Path(run).name, "written": datetime.date.today().isoformat(), **tables,
                             "verdict": verdict.row()})


def write_comparison(path: str | os.PathLike, document: dict[str, Any]) -> Path:
    """Write ``document`` at ``path`` atomically (its folder made); returns the path. Keys keep their order: a
    row's keys are its table's columns, left to right."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(document, indent=2) + "\n")
    return path


def read_comparison(path: str | os.PathLike) -> dict[str, Any]:
    """A committed comparison, checked: its tables are lists of rows (mappings) and its verdict has every field of a
    :class:`~canon_pl.study.verdicts.Verdict` as text; one :class:`SettingError` naming the file otherwise."""
    document = COMPARISON.read(Path(path))
    rows_ok = all(isinstance(row, dict) for key in ("ev_rows", "pair_rows", "meta_rows") for row in document[key])
    verdict = document["verdict"]
    if not rows_ok or sorted(verdict) != sorted(VERDICT_KEYS) or not all(isinstance(v, str) for v in verdict.values()):
        raise SettingError(f"{path} is malformed: its tables must be lists of rows and its verdict must hold "
                           f"{', '.join(VERDICT_KEYS)} as text; {COMPARISON.rebuild}")
    if not document["widths"] or not all(isinstance(w, int) and not isinstance(w, bool) for w in document["widths"]):
        raise SettingError(f"{path} is malformed: widths must be a list of integers; {COMPARISON.rebuild}")
    return document


def committed_verdict(document: dict[str, Any], path: str | os.PathLike) -> Verdict:
    """The document's verdict, its reason saying it was read from ``path`` (measured on another run)."""
    verdict = Verdict(**document["verdict"])
    return Verdict(**{**verdict.row(), "why": f"{verdict.why} (committed: `{path}`, measured on `{document['run']}`)"})


def source_line(document: dict[str, Any], path: str | os.PathLike) -> str:
    """What the report says of committed results above their tables."""
    return (f"From `{path}` (committed): the comparison measured on the run `{document['run']}` on "
            f"{document['written']} with canon-pl {document.get('canon_pl_version', '?')}. This run has no Matryoshka "
            f"of its own: the Matryoshka stage trains it beside the family (`make matryoshka`) and writes the file "
            f"again.")


__all__ = ["COMPARISON", "comparison_document", "committed_verdict", "read_comparison", "source_line",
           "write_comparison"]
