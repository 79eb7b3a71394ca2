"""What the viewer's Widths page reads: every evaluated family's core metrics (``canon-pl evaluate``'s
``<run>/evaluation/summary.json``) as one table, a row per SAE, and the charts that put each metric against width
with the spread over seeds (no Streamlit imports here)."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd

from canon_pl.commands.evaluate import SUMMARY
from canon_pl.errors import CanonError
from canon_pl.io.layout import RunLayout
from canon_pl.viewer.folders import files_inside

METRICS = {"explained_variance": "explained variance", "cossim": "cosine of the reconstruction",
           "relative_reconstruction_bias": "relative reconstruction bias", "l0": "L0",
           "frac_alive": "alive fraction", "average_max_decoder_cosine_sim": "mean highest decoder cosine",
           "ce_loss_score": "CE score", "kl_div_score": "KL score"}
"""The summary metrics the page draws, with their axis titles."""


def find_evaluations(root: str | Path, skipped: list[str] | None = None) -> pd.DataFrame:
    """One row per evaluated SAE below ``root`` (``run`` relative to it, ``name``, ``width``, ``seed_control`` and
    every summary metric); a summary that cannot be read is left out and named in ``skipped``."""
    root = Path(root)
    rows = []
    for path in files_inside(root, f"**/{RunLayout.EVALUATION}/summary.json"):
        try:
            summary = SUMMARY.read(path)
        except CanonError as err:
            if skipped is not None:
                skipped.append(str(err))
            continue
        run = str(path.parent.parent.relative_to(root)) if path.parent.parent != root else root.name
        rows += [{"run": run, "name": r["name"], "width": int(r["width"]), "seed_control": bool(r["seed_control"]),
                  **r["metrics"]} for r in summary["rows"]]
    return pd.DataFrame(rows)


def width_charts(table: pd.DataFrame) -> list[alt.LayerChart]:
    """Per metric of :data:`METRICS` that the table holds: the members' value against width (one line per run), a
    bar from the lowest to the highest value over the seeds of a width that has a seed control."""
    charts = []
    x = alt.X("width:Q", scale=alt.Scale(type="log"), title="latents")
    for metric, title in METRICS.items():
        if metric not in table.columns or table[metric].isna().all():
            continue
        data = table.dropna(subset=[metric])
        members = data[~data["seed_control"]]
        line = alt.Chart(members, title=f"{title} vs width").mark_line(point=True).encode(
            x=x, y=alt.Y(f"{metric}:Q", title=title, scale=alt.Scale(zero=False)), color="run:N",
            tooltip=["run", "name", "width", metric])
        seeds = data.groupby(["run", "width"])[metric].agg(["min", "max", "count"]).reset_index()
        seeds = seeds[seeds["count"] > 1]
        bars = alt.Chart(seeds).mark_rule(strokeWidth=3).encode(x="width:Q", y="min:Q", y2="max:Q", color="run:N",
                                                                tooltip=["run", "width", "min", "max", "count"])
        charts.append(line + bars if len(seeds) else line)
    return charts


__all__ = ["METRICS", "find_evaluations", "width_charts"]
