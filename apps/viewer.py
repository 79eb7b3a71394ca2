"""canon-pl viewer: ``streamlit run apps/viewer.py [-- --checkpoints DIR]``.

Pages: **Runs** (every SAE under ``checkpoints/`` with its held-out metrics and the training curves of the selected
run) and **Stitching** (novel vs reconstruction latents of a pair, the path from S to L). Read-only: it never writes
to the checkpoints folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from canon_pl.stats import LatentStatistics, StatsError
from canon_pl.viewer import find_runs, find_stitching_results, load_pair, member_metrics
from canon_pl.meta import read_meta_analysis
from canon_pl.viewer.latents import (
    family_decoders,
    find_meta_analysis,
    find_statistics,
    latent_view,
    meta_rows,
    nearest_in_other_widths,
)

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


@st.cache_data(ttl=30)
def load_stitching(path: str) -> dict:
    return load_pair(path)


def stitching_page(root: Path) -> None:
    st.header("Stitching: novel vs reconstruction latents")
    pairs = find_stitching_results(root)
    if not pairs:
        st.info(f"No stitching results under {root}. Create them with `canon-pl stitch checkpoints/<family> "
                f"--data python-docs`, or add `canon_pl.training.StitchingCallback` to a family run.")
        return
    labels = [p.label for p in pairs]
    query = st.query_params.get("pair")
    choice = st.sidebar.selectbox("pair", labels, index=labels.index(query) if query in labels else 0)
    st.query_params["pair"] = choice
    data = load_stitching(str(pairs[labels.index(choice)].path))
    s = data["summary"]
    cols = st.columns(4)
    cols[0].metric("novel latents", f"{s['n_novel']:,}", f"{s['novel_fraction']:.1%} of {s['large']['d_sae']:,}")
    cols[1].metric("reconstruction latents", f"{s['n_reconstruction']:,}")
    agreement = s["proxy"]["agreement"]
    cols[2].metric("proxy agrees with ΔMSE", "—" if agreement is None else f"{agreement:.1%}")
    cols[3].metric("FVU S → L", f"{s['fvu_small']:.3f} → {s['fvu_large']:.3f}")
    latents = data["latents"]
    title = f"each large latent's best cosine to the {s['small']['d_sae']}-latent SAE"
    histogram = alt.Chart(latents, title=title).mark_bar().encode(
        x=alt.X("max_cos:Q", bin=alt.Bin(maxbins=50), title="max cosine"), y=alt.Y("count():Q", title="latents"),
        color=alt.Color("class:N"))
    rule = alt.Chart(pd.DataFrame({"tau": [s["tau"]]})).mark_rule(strokeDash=[4, 4]).encode(x="tau:Q")
    path = data["path"]
    path_chart = alt.Chart(path, title="stitching path from S to L").mark_line().encode(
        x=alt.X("latents:Q", title="latents in the stitched SAE"), y=alt.Y("fvu:Q", title="FVU"),
        order="point:Q", tooltip=["point", "kind", "latents", "fvu", "l0"])
    left, right = st.columns(2)
    left.altair_chart(histogram + rule, width="stretch")
    right.altair_chart(path_chart, width="stretch")
    st.altair_chart(alt.Chart(path, title="L0 along the path").mark_line().encode(
        x=alt.X("point:Q", title="step"), y=alt.Y("l0:Q", title="L0")), width="stretch")
    st.subheader("Large latents")
    st.dataframe(latents.sort_values("delta_mse_alone"), hide_index=True)
    st.subheader("Reconstruction groups (small latents → the large latents that replace them)")
    st.dataframe(data["groups"], hide_index=True)


@st.cache_resource(ttl=30)
def open_statistics(path: str) -> LatentStatistics:
    return LatentStatistics.open(path)


@st.cache_resource(ttl=30)
def load_family_decoders(run_dir: str) -> dict:
    return family_decoders(Path(run_dir))


@st.cache_resource(ttl=30)
def load_decomposition(root: str, run_dir: str, member: str):
    """(analysis folder, decomposition) of the meta-SAE of this SAE, or ``None``: read once, not per latent."""
    found = find_meta_analysis(root, Path(run_dir), member)
    return None if found is None else (found, read_meta_analysis(found, arrays=True)["decomposition"])


def latent_page(root: Path) -> None:
    st.header("Latent")
    found = find_statistics(root)
    if not found:
        st.info(f"No latent statistics under {root}. Create them with `canon-pl stats --run checkpoints/<run>`.")
        return
    labels = list(found)
    asked = st.query_params.get("run")
    label = st.sidebar.selectbox("run", labels, index=labels.index(asked) if asked in labels else 0)
    stats = open_statistics(str(found[label]))
    members = stats.members
    asked = st.query_params.get("sae")
    member = st.sidebar.selectbox("SAE", members, index=members.index(asked) if asked in members else 0)
    d_sae = int(stats.index["members"][member]["d_sae"])
    try:
        asked_latent = min(max(int(st.query_params.get("latent", 0)), 0), d_sae - 1)
    except ValueError:
        asked_latent = 0
    j = int(st.sidebar.number_input("latent", min_value=0, max_value=d_sae - 1, value=asked_latent))
    st.query_params.update({"run": label, "sae": member, "latent": str(j)})
    if stats.index.get("kind") == "meta_sae":
        data = stats.latent(member, j)
        st.subheader(f"meta-latent {j}")
        st.dataframe(pd.DataFrame({"member latent": data["member_latents"].tolist(),
                                   "activation": data["member_values"].tolist()}), hide_index=True)
        return
    try:
        view = latent_view(stats, member, j)
    except StatsError as err:
        st.error(str(err))
        return
    st.subheader(f"{label} · {member} · latent {j}")
    st.metric("fires on", f"{view['frequency']:.3%} of tokens")
    left, right = st.columns(2)
    left.markdown("**promoted tokens** " + ", ".join(f"`{t!r}` {v:.2f}" for t, v in view["promoted"]))
    right.markdown("**suppressed tokens** " + ", ".join(f"`{t!r}` {v:.2f}" for t, v in view["suppressed"]))
    st.markdown("**top activations**")
    for value, snippet in view["top"]:
        st.markdown(f"`{value:7.2f}` &nbsp; {snippet}", unsafe_allow_html=True)
    if view["samples"]:
        st.markdown("**examples across the activation range** (a uniform sample of firings)")
        for value, snippet in view["samples"]:
            st.markdown(f"`{value:7.2f}` &nbsp; {snippet}", unsafe_allow_html=True)
    if len(view["histogram"]):
        st.altair_chart(alt.Chart(view["histogram"], title="activation histogram").mark_bar().encode(
            x=alt.X("log10_activation:Q", title="log10 activation"), y=alt.Y("count:Q")), width="stretch")
    nearest = nearest_in_other_widths(load_family_decoders(str(found[label].parent)), member, j)
    if len(nearest):
        smaller = nearest[nearest["width"] < int(member)]
        if len(smaller):
            closest = smaller[smaller["width"] == smaller["width"].max()]["cosine"].max()
            kind = "reconstruction" if closest >= 0.7 else "novel"
            st.markdown(f"**relative to the next smaller SAE**: {kind} (best decoder cosine {closest:.2f}, τ = 0.7)")
        st.markdown("**nearest latents in the other widths** (decoder cosine)")
        st.dataframe(nearest, hide_index=True)
    found_meta = load_decomposition(str(root), str(found[label].parent), member)
    if found_meta is not None:
        meta_dir, decomposition = found_meta
        rows = meta_rows(decomposition, j)
        st.markdown(f"**meta-SAE decomposition** ({meta_dir}): the meta-latents this latent is built from, and "
                    f"other latents that share each")
        if rows:
            st.dataframe(pd.DataFrame(rows), hide_index=True)
        else:
            st.caption("no meta-latent is active for this latent")


def family_charts(table: pd.DataFrame) -> None:
    """FVU against width and against L0 (the sparsity / fidelity trade-off), CE recovered against width; one line
    per folder (a family), one point per SAE."""
    if "explained_variance" not in table.columns:
        return
    data = table.assign(family=table["run"].map(lambda name: name.rsplit("/", 1)[0] if "/" in name else name),
                        fvu=1.0 - table["explained_variance"]).dropna(subset=["fvu"])
    if data.empty:
        return
    tooltip = ["run", "d_sae", "fvu"] + [c for c in ("l0", "ce_recovered") if c in data.columns]
    charts = [alt.Chart(data, title="FVU vs width").mark_line(point=True).encode(
        x=alt.X("d_sae:Q", scale=alt.Scale(type="log"), title="latents"), y=alt.Y("fvu:Q", title="FVU"),
        color="family:N", tooltip=tooltip)]
    if "l0" in data.columns:
        charts.append(alt.Chart(data, title="FVU vs L0").mark_point(filled=True).encode(
            x=alt.X("l0:Q", title="L0"), y=alt.Y("fvu:Q", title="FVU"), color="family:N", tooltip=tooltip))
    if "ce_recovered" in data.columns and data["ce_recovered"].notna().any():
        charts.append(alt.Chart(data.dropna(subset=["ce_recovered"]), title="CE recovered vs width").mark_line(
            point=True).encode(x=alt.X("d_sae:Q", scale=alt.Scale(type="log"), title="latents"),
                               y=alt.Y("ce_recovered:Q", title="CE recovered"), color="family:N", tooltip=tooltip))
    for column, chart in zip(st.columns(len(charts)), charts):
        column.altair_chart(chart, width="stretch")


def main() -> None:
    st.set_page_config(page_title="canon-pl", layout="wide")
    st.title("canon-pl")
    root = checkpoints_dir()
    pages = ["Runs", "Stitching", "Latent"]
    page = st.sidebar.radio("page", pages, index=pages.index(st.query_params.get("page", "Runs"))
                            if st.query_params.get("page", "Runs") in pages else 0)
    st.query_params["page"] = page
    if page == "Stitching":
        stitching_page(root)
        return
    if page == "Latent":
        latent_page(root)
        return
    runs = load_runs(str(root))
    if not runs:
        st.info(f"No exported SAE under {root}. Train one: `lightning fit --config configs/sae_smollm2.yaml`.")
        return
    table = pd.DataFrame(runs).drop(columns=["_path"])
    st.subheader("SAEs")
    st.dataframe(table, hide_index=True)
    family_charts(table)
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
