"""The evaluation summary document (``<run>/evaluation/summary.json``, written by ``canon-pl evaluate``): a row per
SAE of a family (width, whether it is a seed control, the headline metrics), read by the pipeline, the report and the
viewer's Widths page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from canon_pl.errors import CanonError
from canon_pl.io.document import DocumentKind

SUMMARY = DocumentKind("canon_pl.evaluation", 1, "evaluation summary", CanonError,
                       rebuild="write it again with `canon-pl evaluate <run> --data <held-out data>`",
                       required=(("rows", list),))


def read_summary(path: Path) -> dict[str, Any]:
    """An evaluation ``summary.json``, checked down to its rows (each with a ``name``, an int ``width``, a bool
    ``seed_control`` and ``metrics`` mapping names to numbers or null): one :class:`CanonError` naming the file."""
    summary = SUMMARY.read(path)
    for row in summary["rows"]:
        ok = (isinstance(row, dict) and isinstance(row.get("name"), str)
              and isinstance(row.get("width"), int) and not isinstance(row.get("width"), bool)
              and isinstance(row.get("seed_control"), bool) and isinstance(row.get("metrics"), dict)
              and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                      for v in row["metrics"].values())
              and isinstance(row.get("probing") or {}, dict) and isinstance(row.get("variant") or {}, dict))
        if not ok:
            raise CanonError(f"{path} is malformed: each row needs name, width (int), seed_control (bool) and metrics "
                             f"(numbers); {SUMMARY.rebuild}")
    return summary


__all__ = ["SUMMARY", "read_summary"]
