"""canon-pl viewer: ``streamlit run apps/viewer.py [-- --checkpoints DIR]``.

Shows every run under ``checkpoints/``: a table of SAEs with their held-out metrics and the training curves of the
selected run. Read-only: it never writes to the checkpoints folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from canon_pl.viewer import find_runs, member_metrics

CURVES = {
    "train/fvu": "FVU (training batch)",
    "train/l0": "L0 (training batch)",
    "train/dead_fraction": "dead fraction",
    "tok/s": "tokens / s",
}


def checkpoints_dir() -> Path:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", default="checkpoints")
    args, _ = parser.parse_known_args(sys.argv[1:])
    return Path(st.sidebar.text_input("checkpoints folder", args.checkpoints))


@st.cache_data(ttl=30)
def load_runs(root: str) -> list[dict]:
    return [run.row() | {"_path": str(run.path)} for run in find_runs(root)]


@st.cache_data(ttl=30)
def load_metrics(path: str) -> pd.DataFrame:
    return member_metrics(Path(path))


def curve(metrics: pd.DataFrame, column: str, title: str) -> alt.Chart:
    data = metrics[["step", column]].dropna()
    return alt.Chart(data, title=title).mark_line().encode(x=alt.X("step:Q"), y=alt.Y(f"{column}:Q", title=None))


def main() -> None:
    st.set_page_config(page_title="canon-pl", layout="wide")
    st.title("canon-pl")
    root = checkpoints_dir()
    runs = load_runs(str(root))
    if not runs:
        st.info(f"No exported SAE under {root}. Train one: `lightning fit --config configs/sae_smollm2.yaml`.")
        return
    table = pd.DataFrame(runs).drop(columns=["_path"])
    st.subheader("SAEs")
    st.dataframe(table, hide_index=True)
    name = st.sidebar.selectbox("run", [r["run"] for r in runs])
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


main()
