"""The Widths page: which width for my task? Every evaluated family's core metrics against width, seeds as bars."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from canon_pl.viewer.widths import find_evaluations, width_charts
from viewer_pages.common import choose


def render(root: Path) -> None:
    st.header("Widths: what each width of a family gives")
    skipped: list[str] = []
    table = find_evaluations(root, skipped)
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
    st.dataframe(shown, hide_index=True)
