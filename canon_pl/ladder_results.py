"""The ladder's result documents, committed under its ``results`` folder and read by the ladder command, the reports
and the tests alike: one rung of the training ladder (``rung_<steps>.json``), one base of the meta-SAE's base-width
ladder (``base_<width>.json``), and the base-width rule's verdict (:mod:`canon_pl.commands.base_ladder`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from canon_pl.errors import SettingError
from canon_pl.io.document import DocumentKind

RUNG = DocumentKind("canon_pl.ladder_rung", 1, "ladder rung", SettingError)
"""One rung's measurements (``<results>/rung_<steps>.json``)."""
BASE = DocumentKind("canon_pl.ladder_base", 1, "base-width ladder entry", SettingError)
GROWTH_PER_DOUBLING = 0.03
TARGET_EXCESS = 0.10
FLAT_BAND = 0.02
"""The base-width rule: supported when FVE minus the highest floor grows by ``GROWTH_PER_DOUBLING`` per doubling of
the base or reaches ``TARGET_EXCESS``; refuted when every base stays within ``FLAT_BAND`` of its floor."""


def finished_rungs(results: Path) -> list[dict[str, Any]]:
    """Every rung document under ``results``, by step."""
    documents = [RUNG.read(p) for p in sorted(results.glob("rung_*.json"))]
    return sorted(documents, key=lambda d: d["steps"])


def finished_bases(results: Path) -> list[dict[str, Any]]:
    return sorted((BASE.read(p) for p in results.glob("base_*.json")), key=lambda d: d["width"])


def base_ladder_verdict(entries: list[dict[str, Any]]) -> tuple[str, str]:
    """(verdict, why) of the base-width rule (:mod:`canon_pl.commands.base_ladder`) on each base's meta-SAE at ``rows_per_meta``."""
    points = []
    for e in entries:
        finest = min(e["meta"], key=lambda m: m["n_meta"])  # the 21-rows-per-meta-latent meta-SAE
        if finest.get("excess_over_highest_floor") is not None:
            points.append((e["width"], finest["excess_over_highest_floor"]))
    if len(points) < 2:
        return "inconclusive", "fewer than two bases measured"
    (w0, e0), (w1, e1) = points[0], points[-1]
    growth = (e1 - e0) / max(math.log2(w1 / w0), 1e-9)
    text = ("FVE minus the highest floor at 21 rows per meta-latent: "
            + ", ".join(f"{e:+.3f} at {w:,}" for w, e in points) + f" ({growth:+.3f} per doubling)")
    if growth >= GROWTH_PER_DOUBLING or e1 >= TARGET_EXCESS:
        return "supported", text
    if all(abs(e) <= FLAT_BAND for _, e in points):
        return "refuted", text
    return "inconclusive", text


__all__ = ["BASE", "FLAT_BAND", "GROWTH_PER_DOUBLING", "RUNG", "TARGET_EXCESS", "base_ladder_verdict",
           "finished_bases", "finished_rungs"]
