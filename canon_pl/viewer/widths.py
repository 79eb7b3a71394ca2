"""What the viewer's Widths page reads: every evaluated family's core metrics (``canon-pl evaluate``'s
``<run>/evaluation/summary.json``) as one table, a row per SAE, and the charts that put each metric against width
with the spread over seeds (no Streamlit imports here)."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd

from canon_pl.metrics.summary import read_summary
from canon_pl.errors import CanonError
from canon_pl.io.layout import RunLayout
from canon_pl.viewer.folders import files_inside
from canon_pl.viewer.links import latent_url

METRICS = {"explained_variance": "explained variance", "cossim": "cosine of the reconstruction",
           "relative_reconstruction_bias": "relative reconstruction bias", "l0": "L0",
           "frac_alive": "alive fraction", "average_max_decoder_cosine_sim": "mean highest decoder cosine",
           "ce_loss_score": "CE score", "kl_div_score": "KL score",
           "sae_top_1_test_accuracy": "1-sparse probe accuracy", "sae_top_5_test_accuracy": "5-sparse probe accuracy",
           "mean_full_absorption_score": "absorption rate (mean over tasks)"}
"""The summary metrics the page draws, with their axis titles."""


def evaluation_summaries(root: str | Path, skipped: list[str] | None = None) -> list[tuple[str, dict]]:
    """``(run relative to root, summary)`` of every readable ``<run>/evaluation/summary.json`` below ``root``; one
    that cannot be read is left out and named in ``skipped``."""
    root = Path(root)
    found = []
    for path in files_inside(root, f"**/{RunLayout.EVALUATION}/summary.json"):
        try:
            summary = read_summary(path)
        except CanonError as err:
            if skipped is not None:
                skipped.append(str(err))
            continue
        found.append((str(path.parent.parent.relative_to(root)) if path.parent.parent != root else root.name, summary))
    return found


def find_evaluations(summaries: list[tuple[str, dict]]) -> pd.DataFrame:
    """One row per evaluated SAE of ``summaries`` (:func:`evaluation_summaries`): ``run``, ``name``, ``width``,
    ``seed_control`` and every summary metric."""
    return pd.DataFrame([{"run": run, "name": r["name"], "width": int(r["width"]),
                          "seed_control": bool(r["seed_control"]), "variant": variant_text(r.get("variant")),
                          **r["metrics"]}
                         for run, summary in summaries for r in summary["rows"]])


def variant_text(variant: dict | None) -> str:
    """A sparsity variant's changed settings as text (``k=16``), ``""`` for a width itself or a seed control."""
    return ", ".join(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
                     for name, value in (variant or {}).items())


def probe_carriers_table(summaries: list[tuple[str, dict]]) -> pd.DataFrame:
    """One row per evaluated SAE and probing task: the 1- and 5-sparse accuracies, the latent the 1-sparse probe
    uses (``latent``; its ``class`` in the family's stitching, its ``seed_partner`` in the other seed) and ``page``,
    the viewer's link to that latent."""
    rows = []
    for run, summary in summaries:
        for r in summary["rows"]:
            for task, result in (r.get("probing") or {}).items():
                carrier, accuracy = result.get("carrier") or {}, result.get("top_k_accuracy") or {}
                partner = carrier.get("seed_partner") or {}
                rows.append({"run": run, "SAE": r["name"], "width": int(r["width"]), "task": task,
                             "k=1": accuracy.get("1"), "k=5": accuracy.get("5"), "latent": carrier.get("latent"),
                             "class": carrier.get("class"), "seed partner": partner.get("latent"),
                             "partner cosine": partner.get("cosine"),
                             "partner is its best": partner.get("is_its_best_latent"),
                             "absorption": (result.get("absorption") or {}).get("absorption_rate"),
                             "page": latent_url(run, r["name"], carrier["latent"]) if carrier else None})
    return pd.DataFrame(rows)


def width_charts(table: pd.DataFrame) -> list[alt.LayerChart]:
    """Per metric of :data:`METRICS` that the table holds: the members' value against width (one line per run), a
    bar from the lowest to the highest value over the seeds of a width that has a seed control (a sparsity variant
    is no seed: :func:`width_l0_charts` draws those)."""
    charts = []
    x = alt.X("width:Q", scale=alt.Scale(type="log"), title="latents")
    for metric, title in METRICS.items():
        if metric not in table.columns or table[metric].isna().all():
            continue
        data = table.dropna(subset=[metric])
        members = data[~data["seed_control"] & (data["variant"] == "")]
        line = alt.Chart(members, title=f"{title} vs width").mark_line(point=True).encode(
            x=x, y=alt.Y(f"{metric}:Q", title=title, scale=alt.Scale(zero=False)), color="run:N",
            tooltip=["run", "name", "width", metric])
        seeds = data[data["variant"] == ""].groupby(["run", "width"])[metric].agg(["min", "max", "count"]).reset_index()
        seeds = seeds[seeds["count"] > 1]
        bars = alt.Chart(seeds).mark_rule(strokeWidth=3).encode(x="width:Q", y="min:Q", y2="max:Q", color="run:N",
                                                                tooltip=["run", "width", "min", "max", "count"])
        charts.append(line + bars if len(seeds) else line)
    return charts


def width_l0_charts(table: pd.DataFrame) -> list[alt.Chart]:
    """Width × L0, when the table holds sparsity variants: each metric of :data:`METRICS` against L0, one line per
    width (the width itself and its variants, seed controls left out), so a change with width can be told from a
    change with L0."""
    if "variant" not in table.columns or not (table["variant"] != "").any():
        return []
    data = table[~table["seed_control"]].dropna(subset=["l0"])
    charts = []
    for metric, title in METRICS.items():
        if metric == "l0" or metric not in data.columns or data[metric].isna().all():
            continue
        charts.append(alt.Chart(data.dropna(subset=[metric]), title=f"{title} vs L0, per width").mark_line(
            point=True).encode(x=alt.X("l0:Q", title="L0"), y=alt.Y(f"{metric}:Q", title=title,
                                                                        scale=alt.Scale(zero=False)),
                               color="width:N", detail="run:N", tooltip=["run", "name", "width", "variant", metric]))
    return charts


__all__ = ["METRICS", "evaluation_summaries", "find_evaluations", "probe_carriers_table", "variant_text",
           "width_charts", "width_l0_charts"]
