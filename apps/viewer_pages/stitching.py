"""The Stitching page: novel vs reconstruction latents of a pair, the path from S to L."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from canon_pl.viewer import find_stitching_results
from canon_pl.viewer.charts import (
    cosine_histogram_chart,
    granularity_chart,
    path_by_step_chart,
    path_l0_chart,
)
from canon_pl.viewer.links import latent_url
from canon_pl.viewer.stitching import StitchingPair, granularity_points, headline, settings_mismatch_in_run
from viewer_pages.common import (
    choose,
    family_verdicts,
    links,
    load_stitching,
    statistics_of,
)


def render(root: Path) -> None:
    st.header("Stitching: novel vs reconstruction latents")
    skipped: list[str] = []
    pairs = find_stitching_results(root, skipped)
    for reason in skipped:
        st.warning(f"left out: {reason}")
    if not pairs:
        st.info(f"No stitching results under {root}. Create them with `canon-pl stitch checkpoints/<family> "
                f"--data python-docs`, or add `canon_pl.training.StitchingCallback` to a family run.")
        return
    pair = _chosen_pair(root, pairs)
    if pair.nested:
        st.caption("Matryoshka prefixes: the larger SAE holds the smaller one's latents, so its reconstruction "
                   "latents are the prefix's own; the study's claim is about the independently trained widths.")
        _nested_shares(pair)
    mismatch = settings_mismatch_in_run(pairs, pair.run_folder)
    if mismatch:
        st.warning(mismatch)
    data = load_stitching(str(pair.path))
    s = data["summary"]
    h = headline(s)
    _headline_metrics(s, h)
    if not pair.nested:
        _family_verdicts(pair)
    left, right = st.columns(2)
    left.altair_chart(cosine_histogram_chart(data["histogram"], s["tau"], str(s["small"]["d_sae"])), width="stretch")
    right.altair_chart(path_by_step_chart(data["path_drawn"], s["fvu_small"], s["fvu_large"]), width="stretch")
    leaves = int((data["path"]["fvu"] > max(s["fvu_small"], s["fvu_large"])).sum())
    control_excess = (s.get("control") or {}).get("path_excess")
    seeds = "" if control_excess is None else f" (between two seeds of L: {1 + control_excess:.2f}x)"
    right.caption(f"{leaves:,} of {len(data['path']):,} steps lie above the worse endpoint's FVU (outside the shaded "
                  f"band); the path's peak is {1 + s['path_excess']:.2f}x the worse endpoint{seeds}.")
    st.altair_chart(path_l0_chart(data["path_drawn"]), width="stretch")
    _control_charts(data, h, pair)
    granularity = granularity_points([s])
    if not granularity.empty:
        st.subheader("The path at every granularity of grouping")
        st.caption("The path walked again with its latents grouped ever more coarsely (decoder cosine at falling "
                   "thresholds, then by reconstruction overlap); the paper's claim holds when the pair's path (solid) "
                   "falls below 1.05x at finer groups than its cross-seed control's (dashed).")
        st.altair_chart(granularity_chart(granularity), width="stretch")
    _latent_tables(root, pair, data)


def _chosen_pair(root: Path, pairs: list[StitchingPair]) -> StitchingPair:
    """The pair the sidebar (or ``?pair=``, or ``?run=``: that run's first pair) chooses."""
    labels = [p.label for p in pairs]
    asked_run = st.query_params.get("run")
    if asked_run is not None and "pair" not in st.query_params:  # ?run= opens that run's first pair
        of_run = [p.label for p in pairs if p.run == asked_run]
        if of_run:
            st.query_params["pair"] = of_run[0]
        else:
            st.warning(f"no stitching results for run {asked_run!r} under {root}; showing {labels[0]}")
    return pairs[labels.index(choose("pair", labels, "pair"))]


def _headline_metrics(s: dict[str, Any], h: dict[str, Any]) -> None:
    """The pair's headline: novel latents by the definition beside their cross-seed control and spread, the FVUs,
    and the cosine proxy with its agreement."""
    cols = st.columns(4)
    cols[0].metric("novel latents (by definition)", "—" if h["n_novel_definition"] is None
                   else f"{h['n_novel_definition']:,}",
                   None if h["novel_definition"] is None else f"{h['novel_definition']:.1%} of {h['d_sae']:,}",
                   delta_color="off", delta_arrow="off", help="latents of L that fire and lower S's error when added to S alone")
    cols[1].metric("cross-seed control (by definition)", "—" if h["control_definition"] is None
                   else f"{h['control_definition']:.1%}", None if h["control_name"] is None
                   else "L's other seed against L", delta_color="off", delta_arrow="off",
                   help="the same figure for L's other seed against L: what seed noise alone gives")
    cols[2].metric("per-chunk spread", "—" if h["spread"] is None else f"± {h['spread'][1]:.1%}",
                   None if h["control_spread"] is None else f"control ± {h['control_spread'][1]:.1%}",
                   delta_color="off", delta_arrow="off", help="standard deviation of the novel fraction over disjoint token chunks")
    cols[3].metric("FVU S → L", f"{s['fvu_small']:.3f} → {s['fvu_large']:.3f}")
    proxy = st.columns(4)
    proxy[0].metric("novel by cosine (proxy)", f"{h['n_novel_cosine']:,}", f"{h['novel_cosine']:.1%}",
                    delta_color="off", delta_arrow="off", help="no decoder row of S within cosine tau: the cheap proxy")
    proxy[1].metric("proxy agrees with the definition",
                    "—" if h["agreement"] is None else f"{h['agreement']:.1%}")


STITCHING_CLAIMS = ("A wider SAE has latents", "Stitching interpolates", "A monotone path needs finer groups")
"""The claims (the start of each verdict's) this page shows: novel latents, the path, the path's granularity."""


def _family_verdicts(pair: StitchingPair) -> None:
    """What the report concludes on this pair's family, from the same rules (canon_pl/study/verdicts.py)."""
    try:
        rows, trained, reason = family_verdicts(str(pair.run_folder))
    except Exception as err:  # noqa: BLE001 - a family the report cannot read: say why, keep the page
        st.caption(f"The report's verdicts cannot be read for {pair.run_folder}: {err}")
        return
    shown = [r for r in rows if r["claim"].startswith(STITCHING_CLAIMS)]
    lines = [f"- {r['claim']}: **{r['verdict']}** — {r['why']}" for r in shown]
    st.markdown("**The report's verdicts on this family** (rules: `canon_pl/study/verdicts.py`, "
                f"preconditions {'pass' if trained else 'fail'}: {reason})\n" + "\n".join(lines))


def _nested_shares(pair: StitchingPair) -> None:
    """What the report's Matryoshka verdict rests on: the share of L's latents another seed's prefix matches, against
    the same share for the independently trained SAE of L's width (each with its L0), and why the added latents'
    novelty decides nothing."""
    from canon_pl.io.layout import RunLayout
    from canon_pl.study.verdicts import CONSISTENCY_THRESHOLD, L0_TOLERANCE, MARGIN, large_l0, seed_consistency

    nested = load_stitching(str(pair.path))["summary"]
    independent_path = RunLayout(pair.run_folder.parent).stitching_pair(*pair.widths)
    independent = load_stitching(str(independent_path))["summary"] if independent_path.is_file() else {}

    def share(summary: dict) -> str:
        value, l0 = seed_consistency(summary), large_l0(summary)
        return "—" if value is None else f"{value:.1%} (L0 {'—' if l0 is None else f'{l0:.1f}'})"

    st.markdown(f"**Seeds share**, the report's test of *more canonical*: another seed matches {share(nested)} of the "
                f"{pair.widths[1]:,}-latent prefix's latents and {share(independent)} of the independently trained "
                f"SAE's (Hungarian, cosine ≥ {CONSISTENCY_THRESHOLD}). The report calls the prefixes more canonical "
                f"only where the prefix's share is higher by ≥ {MARGIN:.0%} at every width whose L0s agree within "
                f"{L0_TOLERANCE:.0%}. The latents a larger prefix adds are trained on the smaller prefix's residual: "
                f"their novelty below holds by construction and decides nothing.")


def _control_charts(data: dict[str, Any], h: dict[str, Any], pair: StitchingPair) -> None:
    """The same charts for L against its other seed (or why a results file has none)."""
    s, control = data["summary"], data["control"]
    if control is not None:
        st.subheader(f"The control: L against its other seed ({h['control_name']})")
        st.caption("The same charts for two SAEs of L's width that differ only in their init seed: what the pair's "
                   "cosines and path would look like if width changed nothing.")
        left, right = st.columns(2)
        left.altair_chart(cosine_histogram_chart(control["histogram"], s["tau"], f"{s['large']['d_sae']} (other seed)"),
                          width="stretch")
        ends = control["path"]["fvu"]
        right.altair_chart(path_by_step_chart(control["path_drawn"], float(ends.iloc[0]), float(ends.iloc[-1]),
                                              title="stitching path from L to its other seed"), width="stretch")
    elif h["control_name"] is not None:
        st.caption(f"This results file predates the control's stored path: `canon-pl stitch {pair.run_folder}` "
                   "again draws the pair against its control.")


def _latent_tables(root: Path, pair: StitchingPair, data: dict[str, Any]) -> None:
    """L's latents (novel only on request) and the reconstruction groups, linked to their Latent pages when the run
    has statistics."""
    s = data["summary"]
    small, large = str(s["small"]["d_sae"]), str(s["large"]["d_sae"])
    run = str(pair.run_folder.relative_to(root))
    linked = run in statistics_of(str(root))
    st.subheader("Large latents")
    table = data["latents"].sort_values("delta_mse_alone")
    config = {}
    if linked:
        table = table.assign(page=[latent_url(run, large, j) for j in table["latent"]])
        config = {"page": st.column_config.LinkColumn("latent page", display_text="open")}
    else:
        st.caption(f"Latent pages need statistics: `canon-pl stats --run {root / run}`.")
    novel_only = st.toggle("novel latents only (by the definition, as the headline counts them)",
                           key="stitching:novel_only")
    table = table.rename(columns={"class": "class (cosine proxy)", "class_by_definition": "class (definition)"})
    shown = table[table["class (definition)"] == "novel"] if novel_only else table
    st.dataframe(shown, hide_index=True, column_config=config)
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
