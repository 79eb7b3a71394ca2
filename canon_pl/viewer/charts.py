"""Altair charts shared by the viewer and the report (no Streamlit imports): one function per figure."""

from __future__ import annotations

import altair as alt
import pandas as pd


def family_table(table: pd.DataFrame) -> pd.DataFrame:
    """The runs table with ``fvu`` (1 - explained variance) added (and ``family``, when missing, the run itself); rows
    without a held-out FVU dropped."""
    if "explained_variance" not in table.columns:
        return pd.DataFrame()
    family = table["family"] if "family" in table.columns else table["run"]
    return table.assign(family=family, fvu=1.0 - table["explained_variance"]).dropna(subset=["fvu"])


def family_charts(table: pd.DataFrame) -> list[alt.Chart]:
    """FVU against width and against L0 (the sparsity / fidelity trade-off), CE recovered against width; one line
    per family through its members, a bar at each width with seed controls spanning the lowest to the highest FVU
    over its seeds. ``table``: rows of ``find_runs`` (``run``, ``d_sae``, ``explained_variance``, ``l0``,
    ``ce_recovered``, ``seed control``)."""
    data = family_table(table)
    if data.empty:
        return []
    tooltip = ["run", "d_sae", "fvu"] + [c for c in ("l0", "ce_recovered") if c in data.columns]
    width = alt.X("d_sae:Q", scale=alt.Scale(type="log"), title="latents")
    controls = data["seed control"].fillna(False).astype(bool) if "seed control" in data.columns else \
        pd.Series(False, index=data.index)
    members = data[~controls]
    line = alt.Chart(members, title="FVU vs width (bars: the spread over seeds)").mark_line(point=True).encode(
        x=width, y=alt.Y("fvu:Q", title="FVU"), color="family:N", tooltip=tooltip)
    seeds = data.groupby(["family", "d_sae"])["fvu"].agg(["min", "max", "count"]).reset_index()
    seeds = seeds[seeds["count"] > 1]  # a width with a seed control beside its member
    bars = alt.Chart(seeds).mark_rule(strokeWidth=2).encode(
        x="d_sae:Q", y=alt.Y("min:Q", title="FVU"), y2="max:Q", color="family:N",
        tooltip=["family", "d_sae", alt.Tooltip("min:Q", title="lowest FVU"),
                 alt.Tooltip("max:Q", title="highest FVU"), alt.Tooltip("count:Q", title="seeds")])
    charts = [line + bars if len(seeds) else line]
    if "l0" in data.columns:
        charts.append(alt.Chart(data, title="FVU vs L0").mark_point(filled=True).encode(
            x=alt.X("l0:Q", title="L0"), y=alt.Y("fvu:Q", title="FVU"), color="family:N", tooltip=tooltip))
    if "ce_recovered" in members.columns and members["ce_recovered"].notna().any():
        charts.append(alt.Chart(members.dropna(subset=["ce_recovered"]), title="CE recovered vs width").mark_line(
            point=True).encode(x=width, y=alt.Y("ce_recovered:Q", title="CE recovered"), color="family:N",
                               tooltip=tooltip))
    return charts


def cosine_histogram_chart(histogram: pd.DataFrame, tau: float, small_width: int | str) -> alt.LayerChart:
    """Each large latent's best decoder cosine to the small SAE (binned: ``start, end, class, count``) with the τ
    line."""
    bars = alt.Chart(histogram, title=f"each large latent's best cosine to the {small_width}-latent SAE").mark_bar(
    ).encode(x=alt.X("start:Q", bin="binned", title="max cosine"), x2="end:Q", y=alt.Y("count:Q", title="latents"),
             color=alt.Color("class:N", title="by the cosine proxy (τ)"), tooltip=["class", "start", "end", "count"])
    rule = alt.Chart(pd.DataFrame({"tau": [tau]})).mark_rule(strokeDash=[4, 4]).encode(x="tau:Q")
    return bars + rule


def stitching_path_chart(path: pd.DataFrame, title: str = "stitching path from S to L") -> alt.Chart:
    """FVU against the number of latents along the path (``point, kind, latents, fvu, l0``; a ``pair`` column draws
    one line per pair)."""
    encoding = dict(x=alt.X("latents:Q", title="latents in the stitched SAE"), y=alt.Y("fvu:Q", title="FVU"),
                    order="point:Q", tooltip=[c for c in ("pair", "point", "kind", "latents", "fvu", "l0")
                                              if c in path.columns])
    if "pair" in path.columns:
        encoding["color"] = alt.Color("pair:N")
    return alt.Chart(path, title=title).mark_line().encode(**encoding)


def path_by_step_chart(path: pd.DataFrame, fvu_small: float, fvu_large: float,
                       title: str = "stitching path from S to L, step by step") -> alt.LayerChart:
    """FVU at each step of the path (``point, kind, latents, fvu, l0``), each step's kind (insertion of a novel
    latent, swap of a group, removal, the decoder-bias switch) told apart by colour, the band between S's FVU and
    L's shaded and both labelled: a monotone path stays inside the band, the steps above S's FVU leave it."""
    band = pd.DataFrame({"low": [min(fvu_small, fvu_large)], "high": [max(fvu_small, fvu_large)]})
    shaded = alt.Chart(band).mark_rect(opacity=0.15, color="green").encode(y="low:Q", y2="high:Q")
    ends = pd.DataFrame({"fvu": [fvu_small, fvu_large], "end": [f"S {fvu_small:.3f}", f"L {fvu_large:.3f}"]})
    rules = alt.Chart(ends).mark_rule(strokeDash=[4, 4], color="gray").encode(y="fvu:Q")
    labels = alt.Chart(ends).mark_text(align="left", dx=4, dy=-6, color="gray").encode(
        y="fvu:Q", x=alt.value(0), text="end:N")
    data = path.assign(leaves_band=path["fvu"] > max(fvu_small, fvu_large))
    line = alt.Chart(data).mark_line(color="lightgray").encode(
        x=alt.X("point:Q", title="step along the path"), y=alt.Y("fvu:Q", title="FVU", scale=alt.Scale(zero=False)),
        order="point:Q")
    points = alt.Chart(data).mark_point(filled=True, size=14).encode(
        x="point:Q", y="fvu:Q", color=alt.Color("kind:N", title="step",
                                                scale=alt.Scale(domain=["start", "novel", "swap", "removal",
                                                                        "decoder_bias"])),
        tooltip=["point", "kind", "latents", "fvu", "l0", "leaves_band"])
    return (shaded + rules + labels + line + points).properties(title=title)


def path_l0_chart(path: pd.DataFrame) -> alt.Chart:
    return alt.Chart(path, title="L0 along the path").mark_line().encode(x=alt.X("point:Q", title="step"),
                                                                         y=alt.Y("l0:Q", title="L0"))


def novel_fraction_chart(pairs: pd.DataFrame) -> alt.Chart:
    """Novel fraction of each adjacent pair (``pair``, ``novel_fraction``) with the paper's ≈ 35 % as a rule."""
    bars = alt.Chart(pairs, title="novel latents per adjacent pair").mark_bar().encode(
        x=alt.X("pair:N", sort=None, title="small → large"), y=alt.Y("novel_fraction:Q", title="novel fraction",
                                                                     scale=alt.Scale(domain=[0, 1])))
    paper = alt.Chart(pd.DataFrame({"y": [0.35]})).mark_rule(strokeDash=[4, 4], color="gray").encode(y="y:Q")
    return bars + paper


def novel_vs_control_chart(fractions: pd.DataFrame) -> alt.Chart:
    """Grouped bars: rows ``pair, measure`` (``definition`` / ``cosine``), ``against`` (``smaller width`` / ``other
    seed (control)``) and ``fraction``, with the paper's ≈ 35 % as a rule."""
    bars = alt.Chart(fractions).mark_bar().encode(
        x=alt.X("against:N", title=None, sort=None), y=alt.Y("fraction:Q", title="novel fraction",
                                                            scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("against:N", sort=None), column=alt.Column("pair:N", sort=None, title="small → large"),
        row=alt.Row("measure:N", title=None))
    return bars.properties(width=120, height=120, title="novel latents: against the smaller SAE vs another seed")


def training_curve_chart(curves: pd.DataFrame, title: str) -> alt.Chart:
    """Lines ``step`` vs ``value`` per ``series`` (for example each pair's novel fraction and its control's over
    training)."""
    return alt.Chart(curves, title=title).mark_line(point=True).encode(
        x=alt.X("step:Q", title="training step"), y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), title=None),
        color=alt.Color("series:N", title=None), tooltip=["series", "step", "value"])


def granularity_chart(points: pd.DataFrame) -> alt.Chart:
    """The path's peak over its worse endpoint against the largest group's share of L-latents (log), one line per
    pair (colour) and per comparison (dashed: the cross-seed control). ``points``: pair, against, grouping, threshold,
    largest group share, path peak."""
    base = alt.Chart(points, title="path peak against group granularity", width=420, height=240)
    lines = base.mark_line(point=True).encode(
        x=alt.X("largest group share:Q", scale=alt.Scale(type="log"), title="largest group's share of L-latents (log)"),
        y=alt.Y("path peak:Q", title="path peak / worse endpoint"),
        color=alt.Color("pair:N"), strokeDash=alt.StrokeDash("against:N", title=None),
        tooltip=["pair", "against", "grouping", "threshold", "largest group share", "path peak"])
    monotone = alt.Chart(pd.DataFrame({"y": [1.05]})).mark_rule(strokeDash=[2, 2], color="gray").encode(y="y:Q")
    return lines + monotone


__all__ = ["cosine_histogram_chart", "family_charts", "family_table", "granularity_chart", "novel_fraction_chart",
           "novel_vs_control_chart", "path_by_step_chart", "path_l0_chart", "stitching_path_chart",
           "training_curve_chart"]
