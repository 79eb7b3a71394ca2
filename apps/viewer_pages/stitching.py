"""The Stitching page: novel vs reconstruction latents of a pair, the path from S to L."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from canon_pl.viewer import find_stitching_results
from canon_pl.viewer.charts import (
    cosine_histogram_chart,
    path_l0_chart,
    stitching_path_chart,
)
from canon_pl.viewer.links import latent_url
from canon_pl.viewer.stitching import settings_mismatch_in_run
from viewer_pages.common import (
    choose,
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
