"""The Search page: latents by a token."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from canon_pl.errors import CanonError
from canon_pl.viewer.links import latent_url, meta_latent_url
from canon_pl.viewer.search import search_latents
from viewer_pages.common import (
    load_centre_tokens,
    open_statistics,
    seeded,
    statistics_of,
)


def render(root: Path) -> None:
    st.header("Search latents by a token")
    found = statistics_of(str(root), None)
    if not found:
        st.info(f"Nothing to search under {root}: search reads latent statistics. Create them with `canon-pl stats "
                f"--run checkpoints/<run>`.")
        return
    seeded("search:q", lambda value: isinstance(value, str), lambda: st.query_params.get("q", ""))
    seeded("search:whole", lambda value: isinstance(value, bool), lambda: st.query_params.get("whole", "1") == "1")
    query = st.text_input("token or word", key="search:q")
    whole = st.toggle("whole token (off: any token containing it)", key="search:whole")
    st.query_params.update({"q": query, "whole": "1" if whole else "0"})
    if not query.strip():
        st.caption("Finds latents whose top activating examples peak on the token, or whose promoted tokens "
                   "include it, in every SAE with statistics.")
        return
    frames = []
    for label, stats_dir in found.items():
        try:  # one damaged set is named and left out; the others are still searched
            stats = open_statistics(str(stats_dir))
            meta = stats.index.get("kind") == "meta_sae"
            centre = None if meta else {m: load_centre_tokens(str(stats_dir), m) for m in stats.members}
            table = search_latents(stats, query, whole=whole, centre_tokens=centre)
        except CanonError as err:
            st.warning(f"{label} left out of the search: {err}")
            continue
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
