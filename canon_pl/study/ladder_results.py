"""The ladder's result documents, committed under its ``results`` folder and read by the ladder command, the reports
and the tests alike: one rung of the training ladder (``rung_<steps>.json``), one base of the meta-SAE's base-width
ladder (``base_<width>.json``), and the base-width rule's verdict (:mod:`canon_pl.commands.base_ladder`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from canon_pl.errors import SettingError
from canon_pl.io.document import DocumentKind

RUNG = DocumentKind("canon_pl.ladder_rung", 1, "ladder rung", SettingError,
                    rebuild="delete it to measure the rung again",
                    required=(("steps", int), ("tokens", int), ("members", dict), ("pairs", list)))
"""One rung's measurements (``<results>/rung_<steps>.json``)."""
BASE = DocumentKind("canon_pl.ladder_base", 1, "base-width ladder entry", SettingError,
                    rebuild="delete it to measure the base again",
                    required=(("width", int), ("steps", int), ("meta", list)))
GROWTH_PER_DOUBLING = 0.03
TARGET_EXCESS = 0.10
FLAT_BAND = 0.02
"""The base-width rule: supported when FVE minus the highest floor grows by ``GROWTH_PER_DOUBLING`` per doubling of
the base or reaches ``TARGET_EXCESS``; refuted when every base stays within ``FLAT_BAND`` of its floor."""


PLATEAU_PER_DOUBLING = 0.02
"""Convergence: the share of a width's latents that its other seed holds (Hungarian-matched decoder rows at cosine
0.7) has plateaued once it rises by less than this per doubling of training, between two consecutive rungs, for
every width of the ladder."""


def seed_agreement(documents: list[dict[str, Any]]) -> dict[int, list[tuple[int, float]]]:
    """``{width of L: [(training tokens, share of L's latents its other seed holds at cosine 0.7)]}`` per rung."""
    shares: dict[int, list[tuple[int, float]]] = {}
    for d in documents:
        for p in d["pairs"]:
            share = ((p.get("control_consistency") or {}).get("shared_at") or {}).get("0.7")
            if share is not None:
                shares.setdefault(int(p["large"]), []).append((int(d["tokens"]), float(share)))
    return shares


def consistency_plateau(documents: list[dict[str, Any]]) -> tuple[int | None, str]:
    """(training tokens of the first rung where the cross-seed share has plateaued for every width, or ``None``;
    a sentence with each width's rise per doubling between its last two rungs) by :data:`PLATEAU_PER_DOUBLING`."""
    shares = seed_agreement(documents)
    if not shares or min(len(points) for points in shares.values()) < 2:
        return None, "fewer than two rungs with a cross-seed match: no rise per doubling yet"
    tokens = sorted({t for points in shares.values() for t, _ in points})
    reached = None
    for t in tokens[1:]:
        rises = []
        for points in shares.values():
            upto = [pt for pt in points if pt[0] <= t]
            if len(upto) >= 2:
                (t0, s0), (t1, s1) = upto[-2], upto[-1]
                rises.append((s1 - s0) / max(math.log2(t1 / t0), 1e-9))
        if rises and len(rises) == len(shares) and max(rises) < PLATEAU_PER_DOUBLING:
            reached = t
            break
    last = []
    for width, points in sorted(shares.items()):
        (t0, s0), (t1, s1) = points[-2], points[-1]
        last.append(f"{width}: {s0:.1%} → {s1:.1%} ({(s1 - s0) / max(math.log2(t1 / t0), 1e-9) * 100:+.1f} points "
                    f"per doubling, {t0 / 1e6:.1f}M → {t1 / 1e6:.1f}M)")
    return reached, "two seeds share " + "; ".join(last)


def read_rung_file(path: Path) -> dict[str, Any]:
    """A committed rung (``rung_<steps>.json``), checked: its format, its keys, and ``steps`` equal to its name's (an
    error naming the file otherwise: committed work is never silently trusted or overwritten)."""
    document = RUNG.read(path, "; delete it to measure the rung again")
    named = path.stem.removeprefix("rung_")
    if str(document["steps"]) != named:
        raise SettingError(f"{path} is malformed: it says steps {document['steps']} but its name says {named}; "
                           f"delete it to measure the rung again")
    return document


def finished_rungs(results: Path) -> list[dict[str, Any]]:
    """Every rung document under ``results``, by step."""
    documents = [read_rung_file(p) for p in sorted(results.glob("rung_*.json"))]
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


__all__ = ["BASE", "FLAT_BAND", "read_rung_file", "GROWTH_PER_DOUBLING", "PLATEAU_PER_DOUBLING", "RUNG", "TARGET_EXCESS",
           "base_ladder_verdict", "consistency_plateau", "finished_bases", "finished_rungs", "seed_agreement"]
