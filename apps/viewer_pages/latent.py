"""The Latent page: examples, tokens, the class against the next smaller SAE, nearest latents in the other
widths, the meta-SAE decomposition."""

from __future__ import annotations

import html

from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from canon_pl.io.layout import RunLayout
from canon_pl.stats import StatsError
from canon_pl.stitching import StitchingError
from canon_pl.viewer.latents import latent_view, members_by_width, nearest_in_other_widths, seed_partners
from canon_pl.viewer.links import anchor, latent_url, meta_latent_url
from canon_pl.viewer.meta import meta_rows
from viewer_pages.common import (
    choose,
    choose_index,
    links,
    load_decomposition,
    load_control_decoders,
    load_family_decoders,
    load_stitching,
    meta_analysis_of,
    open_statistics,
    readable_latents,
    statistics_left_out,
    statistics_of,
    tokens_line,
)


def relative_to_smaller(run_dir: Path, small: int, large: int, latent: int, closest: float) -> str:
    """The latent's class against the next smaller SAE as the run's stitching results state it (their own tau and
    classes), or only its nearest cosine when the pair has no readable results."""
    path = RunLayout(run_dir).stitching_pair(small, large)
    try:
        data = load_stitching(str(path)) if path.exists() else None
    except StitchingError as err:
        return f"**against the {small}-latent SAE**: best decoder cosine {closest:.2f} ({err})"
    if data is None or latent >= len(data["latents"]):
        return (f"**against the {small}-latent SAE**: best decoder cosine {closest:.2f} (no stitching results for "
                f"this pair: `canon-pl stitch {run_dir}`)")
    row = data["latents"].iloc[latent]
    return (f"**against the {small}-latent SAE** (its stitching results, τ = {data['summary']['tau']}): "
            f"{row['class_by_definition']} by definition, {row['class']} by cosine (best decoder cosine "
            f"{closest:.2f})")


def render(root: Path) -> None:
    found = statistics_of(str(root))
    for reason in statistics_left_out(str(root)):
        st.warning(f"left out: {reason}")
    if not found:
        st.info(f"No latent statistics under {root}. Create them with `canon-pl stats --run checkpoints/<run>`.")
        return
    label = choose("run", list(found), "run")
    stats = open_statistics(str(found[label]))
    member = choose("SAE", members_by_width(stats), "sae")
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
    _latent_body(view)
    run_dir = found[label].parent
    decoders = load_family_decoders(str(run_dir))
    _partners(stats, label, member, j, run_dir, decoders)
    nearest = nearest_in_other_widths(decoders, member, j)
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
    _meta_decomposition(root, run_dir, label, member, j)


def _latent_body(view: dict[str, Any]) -> None:
    """How often the latent fires, the tokens it promotes and suppresses, its top and sampled activations in
    context, and its activation histogram."""
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


def _partners(stats: Any, label: str, member: str, j: int, run_dir: Path, decoders: Any) -> None:
    """Latent ``j``'s seed partner (nearest decoder row in the same width's other seed) and its co-firing partners
    (the next smaller width, the seed control), linked when their statistics exist."""
    partners = seed_partners(decoders, load_control_decoders(str(run_dir)), member, j)
    for row in partners.itertuples():
        target = (anchor(f"latent {row.latent}", latent_url(label, row.control, row.latent))
                  if row.control in stats.members else f"latent {row.latent}")
        st.markdown(f"**its seed partner** in {html.escape(str(row.control))} (the same width, another init seed): {target}, decoder "
                    f"cosine {row.cosine:.2f}" + (" — the same direction" if row.cosine >= 0.9 else
                                                  " — no latent of that seed points the same way"
                                                  if row.cosine < 0.7 else ""), unsafe_allow_html=True)
    for partner in stats.cofiring(member, j):  # recorded by canon-pl stats for a family's members
        where = ("the next smaller width" if partner["kind"] == "smaller"
                 else "its seed control (the same width, another init seed)")
        if partner["latent"] is None:
            st.markdown(f"**co-firing** in {html.escape(partner['other'])}, {where}: none (this latent never fired)")
            continue
        target = (anchor(f"latent {partner['latent']}", latent_url(label, partner["other"], partner["latent"]))
                  if partner["other"] in stats.members else f"latent {partner['latent']}")
        st.markdown(f"**co-firing** in {html.escape(partner['other'])}, {where}: {target}, Jaccard {partner['jaccard']:.2f} "
                    f"(the share of the tokens either fires on that both fire on)", unsafe_allow_html=True)


def _meta_decomposition(root: Path, run_dir: Path, label: str, member: str, j: int) -> None:
    """The meta-latents latent ``j`` is built from (when a meta-SAE of ``member`` exists), with the latents that
    share each."""
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
