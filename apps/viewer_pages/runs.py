"""The Runs page: every SAE under the folder with its held-out metrics, family charts and training curves."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from canon_pl.viewer.charts import family_charts
from viewer_pages.common import (
    choose,
    load_diagnostics,
    load_metrics,
    load_runs,
    meta_runs_of,
)

CURVES = {
    "train/fvu": "FVU (training batch)",
    "train/l0": "L0 (training batch)",
    "train/dead_fraction": "dead fraction",
    "tok/s": "tokens / s",
}


def curve(metrics: pd.DataFrame, column: str, title: str) -> alt.Chart:
    data = metrics[["step", column]].dropna()
    return alt.Chart(data, title=title).mark_line().encode(x=alt.X("step:Q"), y=alt.Y(f"{column}:Q", title=None))


def show_family_charts(table: pd.DataFrame) -> None:
    charts = family_charts(table)
    for column, chart in zip(st.columns(len(charts)) if charts else [], charts):
        column.altair_chart(chart, width="stretch")


def render(root: Path) -> None:
    runs = load_runs(str(root))
    if not runs:
        st.info(f"No exported SAE under {root}. Train one: `lightning fit --config configs/sae_smollm2.yaml`, or a "
                f"family: `lightning fit --config configs/family_smollm2.yaml`.")
        return
    metas = {str(path) for path in meta_runs_of(str(root)).values()}
    everything = pd.DataFrame(runs).merge(load_diagnostics(str(root)), on="run", how="left")
    after = [c for c in ("run", "family", "d_sae", "k", "explained_variance", "l0") if c in everything.columns]
    everything = everything[after + ["EV (stitching tokens)", "rows at init"] +
                            [c for c in everything.columns if c not in (*after, "EV (stitching tokens)", "rows at init")]]
    is_meta = everything["_path"].isin(metas)
    table = everything[~is_meta].drop(columns=["_path"])
    st.subheader("SAEs")
    st.dataframe(table, hide_index=True)
    show_family_charts(table)  # token SAEs only: a meta-SAE's FVU is of decoder rows, not of activations
    if is_meta.any():
        st.subheader("Meta-SAEs")
        st.caption("Trained on a base SAE's decoder rows: their explained variance is of those rows (the Meta-latent "
                   "page has each one's floors), so they are kept out of the width charts above.")
        st.dataframe(everything[is_meta].drop(columns=["_path"]).dropna(axis=1, how="all"), hide_index=True)
    token_saes = [r["run"] for r in runs if str(r["_path"]) not in metas]  # the training chart opens on one
    name = choose("run", token_saes + [r["run"] for r in runs if str(r["_path"]) in metas], "run")
    run = next(r for r in runs if r["run"] == name)
    st.subheader(f"Training of {name}")
    metrics = load_metrics(run["_path"])
    shown = [c for c in CURVES if c in metrics.columns]
    if not shown:
        st.caption("no training metrics logged for this run")
        return
    columns = st.columns(min(len(shown), 2))
    for i, column in enumerate(shown):
        columns[i % len(columns)].altair_chart(curve(metrics, column, CURVES[column]), width="stretch")
