"""The Widths page: which width for my task? Every evaluated family's core metrics against width, seeds as bars."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from canon_pl.viewer.widths import (
    evaluation_summaries,
    find_evaluations,
    probe_carriers_table,
    width_charts,
    width_l0_charts,
)
from viewer_pages.common import choose


def render(root: Path) -> None:
    st.header("Widths: what each width of a family gives")
    skipped: list[str] = []
    summaries = evaluation_summaries(root, skipped)
    table = find_evaluations(summaries)
    for reason in skipped:
        st.warning(f"left out: {reason}")
    if table.empty:
        st.info(f"No evaluated family under {root}. Evaluate one with `canon-pl evaluate checkpoints/<family> --data "
                f"python-docs` (SAEBench's core metrics for every member and seed control).")
        return
    runs = sorted(table["run"].unique())
    run = choose("run", ["all", *runs], "run")
    shown = table if run == "all" else table[table["run"] == run]
    st.caption("SAEBench's core metrics on held-out tokens, one point per member; a bar spans a width's seeds (the "
               "member and its seed controls): a difference between widths smaller than that bar is seed noise.")
    charts = width_charts(shown)
    for left, right in zip(charts[::2], [*charts[1::2], None]):
        columns = st.columns(2)
        columns[0].altair_chart(left, width="stretch")
        if right is not None:
            columns[1].altair_chart(right, width="stretch")
    l0_charts = width_l0_charts(shown)
    if l0_charts:
        st.subheader("Width × L0")
        st.caption("The same widths trained at other sparsity settings (the family's sparsity variants): each metric "
                   "against L0, one line per width. Lines that stack by width at equal L0 separate width from L0.")
        for left, right in zip(l0_charts[::2], [*l0_charts[1::2], None]):
            columns = st.columns(2)
            columns[0].altair_chart(left, width="stretch")
            if right is not None:
                columns[1].altair_chart(right, width="stretch")
    st.dataframe(shown, hide_index=True)
    if run != "all":
        _recommended_width(root, run, dict(summaries)[run])
    probes = probe_carriers_table(summaries)
    if not probes.empty:
        probes = probes if run == "all" else probes[probes["run"] == run]
        st.subheader("Which latent carries a probe")
        st.caption("k-sparse probing on token labels of the held-out text (balanced accuracy, 0.5 is chance): the "
                   "latent a 1-sparse probe uses, its class in the stitching against the next narrower member, and "
                   "its nearest decoder row in the other seed of its width.")
        st.dataframe(probes, hide_index=True,
                     column_config={"page": st.column_config.LinkColumn("latent page", display_text="open")})


def _recommended_width(root: Path, run: str, summary: dict) -> None:
    """The width the report recommends for this family, with its rule and one line per step, from the report's own
    function (``recommended_width``) on the evaluation summary and the family's stitching."""
    from canon_pl.study.report import family_pairs
    from canon_pl.study.verdicts import MARGIN, recommended_width

    folder = root / run if (root / run).is_dir() else root
    pairs = [d["summary"] for d in family_pairs(folder)] if (folder / "stitching").is_dir() else []
    width, why = recommended_width(summary["rows"], summary.get("seed_spread") or {}, pairs)
    if width is None:
        return
    st.markdown(f"**Recommended width: {width:,}** (the report's rule, `canon_pl/study/verdicts.py` "
                f"`recommended_width`: climb from the smallest width while each step beats the wider width's seed "
                f"spread in held-out EV and its novel fraction beats its cross-seed control by ≥ {MARGIN:.0%})\n"
                + "\n".join(f"- {line}" for line in why))
