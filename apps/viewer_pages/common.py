"""What the viewer's pages share: sidebar choices kept in the URL (deep links, the back button) and cached readers
of the files under the checkpoints folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import streamlit as st

from canon_pl.meta import read_meta_analysis
from canon_pl.stats import LatentStatistics
from canon_pl.stats.readable import readability_scores
from canon_pl.viewer import find_runs, load_pair, member_metrics
from canon_pl.viewer.runs import member_diagnostics
from canon_pl.viewer.latents import (
    control_decoders,
    family_decoders,
    find_statistics,
    token_html,
)
from canon_pl.viewer.links import anchor
from canon_pl.viewer.meta import (
    base_location,
    find_meta_analysis,
    find_meta_runs,
)
from canon_pl.viewer.search import top_centre_tokens


def seeded(key: str, valid: Callable[[object], bool], from_url: Callable[[], object]) -> None:
    """Give the widget ``key`` its first value from the URL (``from_url()``), once: afterwards the widget keeps its own
    state. A widget rebuilt from the query parameter on every run is a new widget after each change, and Streamlit
    drops the next input to it (latent "+" twice moved one step). A kept value that is no longer ``valid`` (another
    run or SAE has other options) is seeded again."""
    if key not in st.session_state or not valid(st.session_state[key]):
        st.session_state[key] = from_url()


def choose(label: str, options: list[str], param: str) -> str:
    """A sidebar choice that starts at the query parameter ``param`` (a deep link) and writes it back; a link that
    names a choice this folder does not have (stale, or from another folder) says so instead of silently showing
    another."""

    def from_url() -> str:
        asked = st.query_params.get(param)
        if asked is not None and asked not in options:
            st.warning(f"the link asks for {label} {asked!r}, which is not in this folder (it has {len(options)}: "
                       f"{', '.join(options[:5])}{', ...' if len(options) > 5 else ''}); showing {options[0]}")
        return asked if asked in options else options[0]

    key = f"choose:{param}"
    seeded(key, lambda value: value in options, from_url)
    choice = st.sidebar.selectbox(label, options, key=key)
    st.query_params[param] = choice
    return choice


def choose_index(label: str, size: int, param: str) -> int:
    """A sidebar number in ``[0, size)`` that starts at the query parameter ``param`` and writes it back; a link
    outside the range (or not a number) says so and shows the nearest index."""

    def from_url() -> int:
        asked = st.query_params.get(param, "0")
        try:
            index = int(asked)
        except ValueError:
            index = 0
        shown = min(max(index, 0), size - 1)
        if str(shown) != str(asked):
            st.warning(f"the link asks for {label} {asked!r}, but this one has {label}s 0 to {size - 1}: showing "
                       f"{shown}")
        return shown

    key = f"choose_index:{param}"
    seeded(key, lambda value: isinstance(value, int) and 0 <= value < size, from_url)
    value = int(st.sidebar.number_input(label, min_value=0, max_value=size - 1, step=1, key=key))
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


@st.cache_data(ttl=300, show_spinner="reading each SAE's rows at init and its family's stitching EVs")
def load_diagnostics(root: str) -> pd.DataFrame:
    return member_diagnostics(find_runs(root))


@st.cache_data(ttl=30)
def load_metrics(path: str) -> pd.DataFrame:
    return member_metrics(Path(path))


@st.cache_data(ttl=30)
def statistics_of(root: str, kind: str | None = "sae") -> dict[str, Path]:
    return find_statistics(root, kind)


@st.cache_data(ttl=30)
def statistics_left_out(root: str) -> list[str]:
    """Why each statistics set below ``root`` that cannot be read is left out of the pages."""
    skipped: list[str] = []
    find_statistics(root, None, skipped)
    return skipped


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


def family_meta_dir(run: Path) -> Path:
    """Where the meta-SAE the report's verdict reads sits: the one on the family's widest member."""
    from canon_pl.io import read_family_manifest
    from canon_pl.io.layout import RunLayout

    return RunLayout(run).meta_sae(max(int(w) for w in read_family_manifest(run)["members"]))


@st.cache_data(ttl=300, show_spinner="reading the family's stitching results and meta-SAE for the report's verdicts")
def family_verdicts(run_dir: str) -> tuple[list[dict[str, str]], bool, str]:
    """The report's verdicts on the family at ``run_dir`` (the same function: its pairs, its widest member's
    meta-SAE when there is one), as rows (``claim``, ``verdict``, ``why``, ...), with the preconditions and why."""
    from canon_pl.study.report import family_frame, family_pairs, run_verdicts

    run = Path(run_dir)
    meta_dir = family_meta_dir(run)
    meta = read_meta_analysis(meta_dir, arrays=True) if meta_dir.is_dir() else None
    verdicts, (trained, reason) = run_verdicts(family_frame(run), [d["summary"] for d in family_pairs(run)], meta)
    return [v.row() for v in verdicts], trained, reason


@st.cache_resource(ttl=300)
def open_statistics(path: str) -> LatentStatistics:
    return LatentStatistics.open(path)


@st.cache_resource(ttl=300)
def load_family_decoders(run_dir: str) -> dict:
    return family_decoders(Path(run_dir))


@st.cache_resource(ttl=300)
def load_control_decoders(run_dir: str) -> dict:
    return control_decoders(Path(run_dir))


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
