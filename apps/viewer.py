"""canon-pl viewer: ``streamlit run apps/viewer.py [-- --checkpoints DIR] [--any-folder]``.

From the repository root it listens on 127.0.0.1 only (``.streamlit/config.toml``; ``--server.address 0.0.0.0``
opens it to the network) and reads only below ``DIR`` (default ``checkpoints``), never through a symlink that leads
out of it, unless started with ``--any-folder``.

Pages: **Runs** (every SAE under ``checkpoints/`` with its held-out metrics, family charts and training curves),
**Stitching** (novel vs reconstruction latents of a pair, the path from S to L), **Latent** (examples, tokens,
nearest latents in the other widths, meta-SAE decomposition), **Meta-latent** (its member latents) and **Search**
(latents by a token). Every view is a URL (query parameters). Read-only: it never writes to the checkpoints folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from canon_pl.io.layout import RunLayout
from canon_pl.meta import MetaSAEError, read_meta_analysis
from canon_pl.stats import LatentStatistics, StatsError
from canon_pl.stats.readable import readability_scores
from canon_pl.stitching import StitchingError
from canon_pl.viewer import find_runs, find_stitching_results, load_pair, member_metrics
from canon_pl.viewer.charts import (
    cosine_histogram_chart,
    family_charts,
    path_l0_chart,
    stitching_path_chart,
)
from canon_pl.viewer.folders import ViewerFolderError, choose_folder
from canon_pl.viewer.latents import (
    family_decoders,
    find_statistics,
    latent_view,
    nearest_in_other_widths,
    token_html,
)
from canon_pl.viewer.links import PAGES, anchor, latent_url, meta_latent_url
from canon_pl.viewer.meta import (
    base_location,
    find_meta_analysis,
    find_meta_runs,
    meta_latent_view,
    meta_rows,
)
from canon_pl.viewer.search import search_latents, top_centre_tokens
from canon_pl.viewer.stitching import settings_mismatch_in_run

CURVES = {
    "train/fvu": "FVU (training batch)",
    "train/l0": "L0 (training batch)",
    "train/dead_fraction": "dead fraction",
    "tok/s": "tokens / s",
}


def checkpoints_dir() -> Path:
    """The folder the pages read: the sidebar's folder box, which starts at ``--checkpoints`` and may choose only
    below it unless the viewer was started with ``--any-folder`` (canon_pl/viewer/folders.py)."""
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--checkpoints", default="checkpoints")
    parser.add_argument("--any-folder", action="store_true")
    args, _ = parser.parse_known_args(sys.argv[1:])
    asked = st.sidebar.text_input("checkpoints folder", args.checkpoints,
                                  help="a folder below the one the viewer was started on" if not args.any_folder
                                  else "any folder this machine can read (started with --any-folder)")
    try:
        return choose_folder(args.checkpoints, asked, args.any_folder)
    except ViewerFolderError as err:
        st.error(str(err))
        st.stop()


def choose(label: str, options: list[str], param: str) -> str:
    """A sidebar choice that starts at the query parameter ``param`` (a deep link) and writes it back."""
    asked = st.query_params.get(param)
    choice = st.sidebar.selectbox(label, options, index=options.index(asked) if asked in options else 0)
    st.query_params[param] = choice
    return choice


def choose_index(label: str, size: int, param: str) -> int:
    """A sidebar number in ``[0, size)`` that starts at the query parameter ``param`` and writes it back."""
    try:
        asked = min(max(int(st.query_params.get(param, 0)), 0), size - 1)
    except ValueError:
        asked = 0
    value = int(st.sidebar.number_input(label, min_value=0, max_value=size - 1, value=asked))
    st.query_params[param] = str(value)
    return value


def links(items: list[tuple[object, str]]) -> str:
    return ", ".join(anchor(text, url) for text, url in items)


def tokens_line(title: str, pairs: list[tuple[str, float]]) -> str:
    """HTML: ``title`` then each token (quoted, shown literally) with its logit."""
    return f"<b>{title}</b> " + (", ".join(f"<code>{token_html(repr(t))}</code> {v:.2f}" for t, v in pairs) or "—")


@st.cache_data(ttl=30)
def load_runs(root: str) -> list[dict]:
    return [run.row() | {"_path": str(run.path)} for run in find_runs(root)]


@st.cache_data(ttl=30)
def load_metrics(path: str) -> pd.DataFrame:
    return member_metrics(Path(path))


@st.cache_data(ttl=30)
def statistics_of(root: str, kind: str | None = "sae") -> dict[str, Path]:
    return find_statistics(root, kind)


@st.cache_data(ttl=30)
def meta_runs_of(root: str) -> dict[str, Path]:
    return find_meta_runs(root)


@st.cache_data(ttl=30)
def meta_analysis_of(root: str, run_dir: str, member: str) -> Path | None:
    return find_meta_analysis(root, Path(run_dir), member)


@st.cache_data(ttl=30)
def base_statistics_of(root: str, base: dict) -> tuple[str, str] | None:
    return base_location(root, base, statistics_of(root))


@st.cache_data(ttl=30)
def load_stitching(path: str) -> dict:
    return load_pair(path)


@st.cache_resource(ttl=300)
def open_statistics(path: str) -> LatentStatistics:
    return LatentStatistics.open(path)


@st.cache_resource(ttl=300)
def load_family_decoders(run_dir: str) -> dict:
    return family_decoders(Path(run_dir))


@st.cache_resource(ttl=300)
def load_decomposition(path: str):
    return read_meta_analysis(path, arrays=True)["decomposition"]


@st.cache_resource(ttl=300)
def load_array(stats_dir: str, member: str, key: str):
    return open_statistics(stats_dir).array(member, key)


@st.cache_resource(ttl=300)
def load_centre_tokens(stats_dir: str, member: str):
    return top_centre_tokens(open_statistics(stats_dir), member)


@st.cache_data(ttl=300)
def readable_latents(stats_dir: str, member: str, n: int = 20) -> pd.DataFrame:
    """The ``n`` most readable latents of ``member`` by the report's rule (canon_pl/stats/readable.py)."""
    stats = open_statistics(stats_dir)
    frequency = stats.frequencies(member)
    scores = readability_scores(frequency, load_centre_tokens(stats_dir, member))
    order = [j for j in scores.argsort(descending=True).tolist() if scores[j] >= 0][:n]
    return pd.DataFrame({"latent": order, "concentration": [float(scores[j]) for j in order],
                         "frequency": [float(frequency[j]) for j in order]})


def curve(metrics: pd.DataFrame, column: str, title: str) -> alt.Chart:
    data = metrics[["step", column]].dropna()
    return alt.Chart(data, title=title).mark_line().encode(x=alt.X("step:Q"), y=alt.Y(f"{column}:Q", title=None))


def show_family_charts(table: pd.DataFrame) -> None:
    charts = family_charts(table)
    for column, chart in zip(st.columns(len(charts)) if charts else [], charts):
        column.altair_chart(chart, width="stretch")


def runs_page(root: Path) -> None:
    runs = load_runs(str(root))
    if not runs:
        st.info(f"No exported SAE under {root}. Train one: `lightning fit --config configs/sae_smollm2.yaml`, or a "
                f"family: `lightning fit --config configs/family_smollm2.yaml`.")
        return
    table = pd.DataFrame(runs).drop(columns=["_path"])
    st.subheader("SAEs")
    st.dataframe(table, hide_index=True)
    show_family_charts(table)
    name = choose("run", [r["run"] for r in runs], "run")
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


def stitching_page(root: Path) -> None:
    st.header("Stitching: novel vs reconstruction latents")
    pairs = find_stitching_results(root)
    if not pairs:
        st.info(f"No stitching results under {root}. Create them with `canon-pl stitch checkpoints/<family> "
                f"--data python-docs`, or add `canon_pl.training.StitchingCallback` to a family run.")
        return
    labels = [p.label for p in pairs]
    pair = pairs[labels.index(choose("pair", labels, "pair"))]
    mismatch = settings_mismatch_in_run(pairs, pair.run_folder)
    if mismatch:
        st.warning(mismatch)
    data = load_stitching(str(pair.path))
    s = data["summary"]
    small, large = str(s["small"]["d_sae"]), str(s["large"]["d_sae"])
    cols = st.columns(4)
    cols[0].metric("novel latents", f"{s['n_novel']:,}", f"{s['novel_fraction']:.1%} of {s['large']['d_sae']:,}",
                   delta_color="off")
    cols[1].metric("reconstruction latents", f"{s['n_reconstruction']:,}")
    agreement = s["proxy"]["agreement"]
    cols[2].metric("proxy agrees with ΔMSE", "—" if agreement is None else f"{agreement:.1%}")
    cols[3].metric("FVU S → L", f"{s['fvu_small']:.3f} → {s['fvu_large']:.3f}")
    latents = data["latents"]
    left, right = st.columns(2)
    left.altair_chart(cosine_histogram_chart(data["histogram"], s["tau"], small), width="stretch")
    right.altair_chart(stitching_path_chart(data["path_drawn"]), width="stretch")
    st.altair_chart(path_l0_chart(data["path_drawn"]), width="stretch")
    run = str(pair.run_folder.relative_to(root))
    linked = run in statistics_of(str(root))
    st.subheader("Large latents")
    table = latents.sort_values("delta_mse_alone")
    config = {}
    if linked:
        table = table.assign(page=[latent_url(run, large, j) for j in table["latent"]])
        config = {"page": st.column_config.LinkColumn("latent page", display_text="open")}
    else:
        st.caption(f"Latent pages need statistics: `canon-pl stats --run {root / run}`.")
    novel_only = st.toggle("novel latents only", value=False)
    st.dataframe(table[table["class"] == "novel"] if novel_only else table, hide_index=True, column_config=config)
    st.subheader("Reconstruction groups (small latents → the large latents that replace them)")
    groups = data["groups"]
    if linked and len(groups):
        shown = groups.head(50)
        lines = [f"{links([(j, latent_url(run, small, j)) for j in row.small_latents])} → "
                 f"{links([(j, latent_url(run, large, j)) for j in row.large_latents])}" for row in shown.itertuples()]
        st.markdown("<br>".join(lines), unsafe_allow_html=True)
        if len(groups) > len(shown):
            st.caption(f"the first {len(shown)} of {len(groups)} groups; all of them in the table below")
    st.dataframe(groups, hide_index=True)


def relative_to_smaller(run_dir: Path, small: int, large: int, latent: int, closest: float) -> str:
    """The latent's class against the next smaller SAE as the run's stitching results state it (their own tau and
    classes), or only its nearest cosine when the pair has no readable results."""
    path = RunLayout(run_dir).stitching_pair(small, large)
    try:
        data = load_stitching(str(path)) if path.is_file() else None
    except StitchingError:
        data = None
    if data is None or latent >= len(data["latents"]):
        return (f"**against the {small}-latent SAE**: best decoder cosine {closest:.2f} (no stitching results for "
                f"this pair: `canon-pl stitch {run_dir}`)")
    row = data["latents"].iloc[latent]
    return (f"**against the {small}-latent SAE** (its stitching results, τ = {data['summary']['tau']}): "
            f"{row['class_by_definition']} by definition, {row['class']} by cosine (best decoder cosine "
            f"{closest:.2f})")


def latent_page(root: Path) -> None:
    st.header("Latent")
    found = statistics_of(str(root))
    if not found:
        st.info(f"No latent statistics under {root}. Create them with `canon-pl stats --run checkpoints/<run>`.")
        return
    label = choose("run", list(found), "run")
    stats = open_statistics(str(found[label]))
    member = choose("SAE", stats.members, "sae")
    with st.sidebar.expander("most readable latents (fire on 0.05–2% of tokens; ranked by the share of top examples "
                             "that peak on one token, the rule the report uses)"):
        readable = readable_latents(str(found[label]), member)
        readable = readable.assign(page=[latent_url(label, member, j) for j in readable["latent"]])
        st.dataframe(readable, hide_index=True,
                     column_config={"page": st.column_config.LinkColumn("latent page", display_text="open")})
    j = choose_index("latent", int(stats.index["members"][member]["d_sae"]), "latent")
    try:
        view = latent_view(stats, member, j)
    except StatsError as err:
        st.error(str(err))
        return
    st.subheader(f"{label} · {member} · latent {j}")
    st.metric("fires on", f"{view['frequency']:.3%} of tokens")
    left, right = st.columns(2)
    left.markdown(tokens_line("promoted tokens", view["promoted"]), unsafe_allow_html=True)
    right.markdown(tokens_line("suppressed tokens", view["suppressed"]), unsafe_allow_html=True)
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
    run_dir = found[label].parent
    nearest = nearest_in_other_widths(load_family_decoders(str(run_dir)), member, j)
    if len(nearest):
        smaller = nearest[nearest["width"] < int(member)]
        if len(smaller):
            next_smaller = int(smaller["width"].max())
            closest = smaller[smaller["width"] == next_smaller]["cosine"].max()
            st.markdown(relative_to_smaller(run_dir, next_smaller, int(member), j, closest))
        st.markdown("**nearest latents in the other widths** (decoder cosine)")
        nearest = nearest.assign(page=[latent_url(label, str(w), i) for w, i in zip(nearest["width"],
                                                                                    nearest["latent"])])
        st.dataframe(nearest, hide_index=True,
                     column_config={"page": st.column_config.LinkColumn("latent page", display_text="open")})
    meta_dir = meta_analysis_of(str(root), str(run_dir), member)
    if meta_dir is None:
        return
    meta_run = str(meta_dir.relative_to(root))
    rows = meta_rows(load_decomposition(str(meta_dir)), j)
    st.markdown(f"**meta-SAE decomposition** ({meta_run}): the meta-latents this latent is built from, and other "
                f"latents that share each")
    if not rows:
        st.caption("no meta-latent is active for this latent")
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    lines = [anchor(f"meta-latent {r['meta']}", meta_latent_url(meta_run, r["meta"])) + f" ({r['activation']:.2f}): "
             + links([(b, latent_url(label, member, b)) for b in r["siblings"]]) for r in rows]
    st.markdown("<br>".join(lines), unsafe_allow_html=True)


def meta_latent_page(root: Path) -> None:
    st.header("Meta-latent")
    found = meta_runs_of(str(root))
    if not found:
        st.info(f"No meta-SAE analysis under {root}. Train a meta-SAE: `lightning fit --config "
                f"configs/meta_sae_smollm2.yaml`, or `canon-pl meta-sae checkpoints/<family> --width <w>`.")
        return
    label = choose("meta-SAE", list(found), "meta_run")
    try:
        summary = read_meta_analysis(found[label])
        decomposition = load_decomposition(str(found[label]))
    except MetaSAEError as err:
        st.error(str(err))
        return
    m = choose_index("meta-latent", decomposition.n_meta, "meta")
    meta_stats_dir = RunLayout(found[label]).stats
    meta_stats = open_statistics(str(meta_stats_dir)) if (meta_stats_dir / "stats.json").is_file() else None
    view = meta_latent_view(decomposition, m, meta_stats)
    base = summary.get("base") or {}
    st.subheader(f"{label} · meta-latent {m}")
    cols = st.columns(3)
    cols[0].metric("member latents", f"{view['n_members']:,}")
    cols[1].metric("density", f"{view['density']:.2%}", f"of {decomposition.n_base:,} base latents",
                   delta_color="off")
    cols[2].metric("base SAE", f"{base.get('width', '?')} latents")
    if meta_stats is None:
        st.caption(f"Promoted tokens need the meta-SAE's statistics: `canon-pl stats --run {found[label]}`.")
    else:
        left, right = st.columns(2)
        left.markdown(tokens_line("promoted tokens", view["promoted"]), unsafe_allow_html=True)
        right.markdown(tokens_line("suppressed tokens", view["suppressed"]), unsafe_allow_html=True)
    if not view["members"]:
        st.caption("no base latent uses this meta-latent (dead)")
        return
    where = base_statistics_of(str(root), base)
    members = pd.DataFrame(view["members"], columns=["latent", "activation"])
    if where is None:
        st.caption("Latent pages of the members need the base SAE's statistics: `canon-pl stats --run <base run>`.")
    else:
        run, member = where
        stats_dir = str(statistics_of(str(root))[run])
        promoted = load_array(stats_dir, member, "promoted_tokens")[members["latent"].tolist(), :4]
        strings = open_statistics(stats_dir).token_strings()
        members["promoted tokens"] = [" ".join(repr(strings.get(int(t), f"<{int(t)}>")) for t in row)
                                      for row in promoted]
        members["page"] = [latent_url(run, member, j) for j in members["latent"]]
    st.markdown(f"**member latents** ranked by activation (the first {len(members)} of {view['n_members']})")
    st.dataframe(members, hide_index=True,
                 column_config={"page": st.column_config.LinkColumn("latent page", display_text="open")})


def search_page(root: Path) -> None:
    st.header("Search latents by a token")
    found = statistics_of(str(root), None)
    if not found:
        st.info(f"Nothing to search under {root}: search reads latent statistics. Create them with `canon-pl stats "
                f"--run checkpoints/<run>`.")
        return
    query = st.text_input("token or word", st.query_params.get("q", ""))
    whole = st.toggle("whole token (off: any token containing it)", value=st.query_params.get("whole", "1") == "1")
    st.query_params.update({"q": query, "whole": "1" if whole else "0"})
    if not query.strip():
        st.caption("Finds latents whose top activating examples peak on the token, or whose promoted tokens "
                   "include it, in every SAE with statistics.")
        return
    frames = []
    for label, stats_dir in found.items():
        stats = open_statistics(str(stats_dir))
        meta = stats.index.get("kind") == "meta_sae"
        centre = None if meta else {m: load_centre_tokens(str(stats_dir), m) for m in stats.members}
        table = search_latents(stats, query, whole=whole, centre_tokens=centre)
        if len(table):
            table.insert(0, "run", label)
            table["page"] = [meta_latent_url(label, j) if meta else latent_url(label, sae, j)
                             for sae, j in zip(table["sae"], table["latent"])]
            frames.append(table)
    if not frames:
        st.warning(f"No latent peaks on or promotes a token matching {query!r}. Try turning off 'whole token'.")
        return
    results = pd.concat(frames, ignore_index=True).sort_values(["top_hits"], ascending=False, kind="stable")
    st.markdown(f"**{len(results)} latents** (top hits: top examples that peak on the token; promoted rank: "
                f"0 = the latent's most promoted token, -1 = not promoted)")
    st.dataframe(results, hide_index=True,
                 column_config={"page": st.column_config.LinkColumn("page", display_text="open")})


def main() -> None:
    st.set_page_config(page_title="canon-pl", layout="wide")
    st.title("canon-pl")
    root = checkpoints_dir()
    asked = st.query_params.get("page", "Runs")
    page = st.sidebar.radio("page", PAGES, index=PAGES.index(asked) if asked in PAGES else 0)
    st.query_params["page"] = page
    {"Runs": runs_page, "Stitching": stitching_page, "Latent": latent_page, "Meta-latent": meta_latent_page,
     "Search": search_page}[page](root)


main()
