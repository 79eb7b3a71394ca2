"""The report's words for a calibration (``calibration.json``, ``canon-pl calibrate``): each claim's instrument score
on the known answer, and the section with every instrument's row."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from canon_pl.calibration.score import CALIBRATION

def read_calibration(path: str | os.PathLike) -> dict[str, Any]:
    """``calibration.json`` (the file or its folder), checked."""
    path = Path(path)
    return CALIBRATION.read(path / "calibration.json" if path.is_dir() else path)


def _mark(ok: bool | None) -> str:
    return {True: "pass", False: "**FAIL**", None: "n/a"}[ok]


def claim_scores(document: dict[str, Any]) -> dict[str, str]:
    """``{claim: one sentence}``: how the instrument behind each claim scored on the known answer."""
    worlds = document["worlds"]
    out = {}
    for claim in ("novel_latents", "monotone_path"):
        said = []
        for world, scored in worlds.items():
            verdict, truth = scored["verdicts"][claim], scored["truth_verdicts"].get(claim)
            said.append(f"{world} world: says {verdict}" + (f" (truth: {truth})" if truth else " (truth: no answer)"))
        out[claim] = "; ".join(said)
    planted = worlds.get("planted")
    if planted is not None:
        out["novel_latents"] = "definition's calls on the planted world: " + ", ".join(
            f"novel P {_num(p['definition']['novel']['precision'])} R {_num(p['definition']['novel']['recall'])}"
            for p in planted["pairs"]) + "; " + out["novel_latents"]
    out["meta_latents"] = "; ".join(
        f"{world} dictionary: excess {meta['excess']:+.3f}, says {meta['verdict']} (truth: {meta['truth']})"
        for world, meta in document["ideal_meta"].items())
    return out


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def calibration_lines(path: str | os.PathLike, markdown_table: Callable[[Any], str]) -> list[str]:
    """The report's section: the worlds, then one row per instrument and world with its score, rule and outcome
    (``markdown_table`` renders a DataFrame as the report renders its tables)."""
    import pandas as pd

    document = read_calibration(path)
    planted = document["worlds"]["planted"]["world"]
    kinds = planted["features_by_kind"]
    table = markdown_table(pd.DataFrame([{**row, "pass": _mark(row["pass"])} for row in document["instruments"]]))
    failed = [row["instrument"] + f" ({row['world']})" for row in document["instruments"] if row["pass"] is False]
    return ["## Calibration: the instruments on a known answer", "",
            f"Before any claim is read on the language model, every instrument ran on a world whose canonical units "
            f"are known (`canon-pl calibrate`, `{document['config']}`): {planted['n_features']:,} true features in "
            f"{planted['spec']['d_in']} dimensions ({kinds['plain']} plain, {kinds['child']} children of "
            f"{planted['spec']['n_families']} parents, {kinds['composite']} composites of "
            f"{planted['spec']['n_components']} shared directions), and its null twin (the same frequencies, "
            f"nothing planted). Scores are against the truth (canon_pl/calibration/truth.py); the rules were fixed "
            f"before the run (canon_pl/calibration/score.py `PASS_RULES`, docs/design.md).", "", table, "",
            ("Every scored instrument passes its rule." if not failed else
             f"Failing their rule: {', '.join(failed)}. A verdict on the language model that rests on a failing "
             f"instrument says what that instrument reports, not what is there."), ""]


__all__ = ["calibration_lines", "claim_scores", "read_calibration"]
