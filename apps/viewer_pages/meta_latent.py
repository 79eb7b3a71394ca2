"""The Meta-latent page: a meta-latent described by the base latents that use it most (their top contexts), its
member latents, and the tokens it promotes where the logit lens means something."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from canon_pl.io.layout import RunLayout
from canon_pl.meta import MetaSAEError, read_meta_analysis
from canon_pl.meta.analysis import FLOOR_NAMES
from canon_pl.stats.readable import LOGIT_LENS_MIN_DEPTH, logit_lens_meaningful
from canon_pl.viewer.latents import latent_view
from canon_pl.viewer.links import anchor, latent_url
from canon_pl.viewer.meta import meta_latent_view
from viewer_pages.common import (
    base_statistics_of,
    choose,
    choose_index,
    family_meta_dir,
    family_verdicts,
    load_array,
    load_decomposition,
    meta_runs_of,
    open_statistics,
    statistics_of,
    tokens_line,
)

SHARED_SHOWN = 5
"""Base latents shown with their top context to say what a meta-latent shares."""


def render(root: Path) -> None:
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
    _fve_against_floors(found[label], summary)
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
    if not view["members"]:
        st.caption("no base latent uses this meta-latent (dead)")
        return
    where = base_statistics_of(str(root), base)
    members = pd.DataFrame(view["members"], columns=["latent", "activation"])
    lens = False
    if where is None:
        st.caption("Latent pages of the members need the base SAE's statistics: `canon-pl stats --run <base run>`.")
    else:
        run, member = where
        stats_dir = str(statistics_of(str(root))[run])
        base_stats = open_statistics(stats_dir)
        lens = logit_lens_meaningful(base_stats.index.get("hook_point"), base_stats.index.get("n_layers"))
        # what it shares: the base latents that use it most, each by its top context (as the authors' dashboard)
        st.markdown(f"**what it shares**: the {min(SHARED_SHOWN, len(members))} base latents that use it most, each "
                    f"with its top context")
        for j in members["latent"].tolist()[:SHARED_SHOWN]:
            top = latent_view(base_stats, member, j)["top"]
            st.markdown(f'{anchor(f"latent {j}", latent_url(run, member, j))} · '
                        f'{top[0][1] if top else "no example"}', unsafe_allow_html=True)
        promoted = load_array(stats_dir, member, "promoted_tokens")[members["latent"].tolist(), :4]
        strings = base_stats.token_strings()
        members["promoted tokens"] = [" ".join(repr(strings.get(int(t), f"<{int(t)}>")) for t in row)
                                      for row in promoted]
        members["page"] = [latent_url(run, member, j) for j in members["latent"]]
    if meta_stats is None:
        st.caption(f"Promoted tokens need the meta-SAE's statistics: `canon-pl stats --run {found[label]}`.")
    elif not lens:
        st.caption(f"Promoted tokens (the logit lens) are left out: the base SAE reads a layer less than "
                   f"{LOGIT_LENS_MIN_DEPTH:.0%} through the model (or its depth is not recorded), where they are "
                   f"sub-word noise; the member latents' contexts above say what it shares.")
    else:
        left, right = st.columns(2)
        left.markdown(tokens_line("promoted tokens", view["promoted"]), unsafe_allow_html=True)
        right.markdown(tokens_line("suppressed tokens", view["suppressed"]), unsafe_allow_html=True)
    st.markdown(f"**member latents** ranked by activation (the first {len(members)} of {view['n_members']})")
    st.dataframe(members, hide_index=True,
                 column_config={"page": st.column_config.LinkColumn("latent page", display_text="open")})


META_CLAIM = "Latents decompose into a few shared meta-latents"
"""The start of the report's meta-SAE verdict (canon_pl/study/verdicts.py)."""


def _fve_against_floors(meta_dir: Path, summary: dict) -> None:
    """The meta-SAE's FVE beside its four floors (the same meta-SAE on rows with no composition), and, for the
    meta-SAE of a family's widest member, the report's verdict on it from the same function."""
    floors = summary.get("floors") or {}
    rows = [{"meta-SAE on": "the base SAE's decoder rows", "FVE": summary.get("fve")}]
    rows += [{"meta-SAE on": f"floor: {name.replace('_', ' ')}", "FVE": floors[name]} for name in FLOOR_NAMES
             if isinstance(floors.get(name), float)]
    with st.expander("FVE against its floors, and the report's verdict", expanded=True):
        st.dataframe(pd.DataFrame(rows), hide_index=True)
        family = meta_dir.parent
        if not (family / "family.json").is_file():
            st.caption("A meta-SAE of a single export: the report states a verdict for a family's widest member.")
            return
        try:
            verdicts, trained, reason = family_verdicts(str(family))
        except Exception as err:  # noqa: BLE001 - a family the report cannot read: say why, keep the page
            st.caption(f"The report's verdict cannot be read for {family}: {err}")
            return
        verdict_on = family_meta_dir(family)
        if meta_dir.resolve() != verdict_on.resolve():
            st.caption(f"The report's verdict is on the meta-SAE of the widest member ({verdict_on.name}), not this one.")
            return
        for row in verdicts:
            if row["claim"].startswith(META_CLAIM):
                st.markdown(f"**The report's verdict** (rules: `canon_pl/study/verdicts.py`, preconditions "
                            f"{'pass' if trained else 'fail'}): {row['claim']}: **{row['verdict']}** — {row['why']}")
