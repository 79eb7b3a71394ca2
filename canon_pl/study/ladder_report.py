"""The training ladder's curves and its report section "does scale close the gap?" (from the rung documents that
``canon-pl ladder`` writes): each claim's figure against training tokens, its control beside it, and a sentence per
claim saying what the curve shows. Nothing here extrapolates: every sentence compares measured rungs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from canon_pl.stitching.granularity import needed_share

FLAT_BAND = 0.02
"""A change smaller than this between the first and the last rung is called flat (fractions and path excess)."""


def ladder_frame(documents: list[dict[str, Any]]) -> pd.DataFrame:
    """``tokens_m, panel, series, value, dash``: one row per rung, figure and series (tokens in millions)."""
    rows = []
    for d in documents:
        t = d["tokens"] / 1e6
        for name, m in d["members"].items():
            rows.append({"tokens_m": t, "panel": "explained variance (held-out solid, training dashed)",
                         "series": name, "value": m["ev_held_out"], "dash": "held-out"})
            rows.append({"tokens_m": t, "panel": "explained variance (held-out solid, training dashed)",
                         "series": name, "value": m["ev_training"], "dash": "training"})
            if m.get("rows_at_init") is not None:
                rows.append({"tokens_m": t, "panel": "decoder rows still at init (cos >= 0.7)", "series": name,
                             "value": m["rows_at_init"], "dash": "held-out"})
        for p in d["pairs"]:
            pair = f"{p['small']} -> {p['large']}"
            rows.append({"tokens_m": t, "panel": "novel by definition (pair solid, cross-seed control dashed)",
                         "series": pair, "value": p["novel_definition"], "dash": "held-out"})
            if p.get("control_definition") is not None:
                rows.append({"tokens_m": t, "panel": "novel by definition (pair solid, cross-seed control dashed)",
                             "series": pair, "value": p["control_definition"], "dash": "training"})
            rows.append({"tokens_m": t, "panel": "path peak / worse endpoint (pair solid, two seeds dashed)",
                         "series": pair, "value": p["path_peak_over_worse_endpoint"], "dash": "held-out"})
            if p.get("control_path_excess") is not None:
                rows.append({"tokens_m": t, "panel": "path peak / worse endpoint (pair solid, two seeds dashed)",
                             "series": pair, "value": 1 + p["control_path_excess"], "dash": "training"})
            for key, dash in (("consistency", "held-out"), ("control_consistency", "training")):
                shared = ((p.get(key) or {}).get("shared_at") or {}).get("0.7")
                if shared is not None:
                    rows.append({"tokens_m": t, "panel": "latents matched at cosine >= 0.7 (S in L solid, two seeds "
                                                         "of L dashed)", "series": pair, "value": shared, "dash": dash})
            for key, dash in (("granularity", "held-out"), ("control_granularity", "training")):
                share = needed_share(p.get(key))
                if share is not None:
                    rows.append({"tokens_m": t, "panel": "largest group share for a monotone path (pair solid, "
                                                         "control dashed)", "series": pair, "value": share,
                                 "dash": dash})
    return pd.DataFrame(rows)


def write_ladder_figures(documents: list[dict[str, Any]], out: str | Path) -> Path | None:
    """``<out>/curves.png`` (one panel per figure, against training tokens) and ``<out>/summary.md`` (the
    section's text and table); ``None`` when there is no rung yet."""
    import altair as alt

    if not documents:
        return None
    out = Path(out)
    frame = ladder_frame(documents)
    charts = []
    for panel, part in frame.groupby("panel", sort=False):
        charts.append(alt.Chart(part, title=panel, width=300, height=200).mark_line(point=True).encode(
            x=alt.X("tokens_m:Q", scale=alt.Scale(type="log", base=2), title="training tokens (millions, log)"),
            y=alt.Y("value:Q", scale=alt.Scale(zero=False), title=None),
            color=alt.Color("series:N", title=None),
            strokeDash=alt.StrokeDash("dash:N", legend=None, sort=["held-out", "training"])))
    rows = [alt.hconcat(*charts[i:i + 2]) for i in range(0, len(charts), 2)]
    path = out / "curves.png"
    alt.vconcat(*rows).resolve_scale(color="independent").save(str(path), scale_factor=1.5)
    from canon_pl.study.ladder_results import finished_bases

    lines = ladder_section(documents, figure=path.name) + base_ladder_lines(finished_bases(out))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return path


def base_ladder_lines(entries: list[dict[str, Any]]) -> list[str]:
    """The meta-SAE's base-width ladder (``base_<width>.json``): per base, its meta-SAEs' FVE against the highest of
    the four floors, and the rule's verdict (:func:`canon_pl.commands.base_ladder.base_ladder_verdict`)."""
    from canon_pl.study.ladder_results import base_ladder_verdict

    if not entries:
        return []
    lines = ["", "### The meta-SAE's base-width ladder", "",
             "| base | steps | rows moved | EV held-out | meta-SAE (rows per meta-latent): FVE / highest floor |",
             "|---|---|---|---|---|"]
    for e in entries:
        metas = "; ".join(f"{m['n_meta']:,} ({m['rows_per_meta']:.1f}): {m['fve']:.3f} / {m['highest_floor']:.3f}"
                          for m in e["meta"] if m.get("highest_floor") is not None)
        lines.append(f"| {e['width']:,} | {e['steps']:,} | {e['rows_moved_fraction']:.1%} | {e['ev_held_out']:.3f} | "
                     f"{metas} |")
    verdict, why = base_ladder_verdict(entries)
    return lines + ["", f"- Meta-latents beyond the decoder's anisotropy as the base widens: **{verdict}** ({why})."]


def _share(curve: dict[str, Any] | None) -> str:
    from canon_pl.stitching.granularity import needed_share

    if not curve:
        return "—"
    value = needed_share(curve)
    return "never" if value is None else f"{value:.0%}"


def _trend(first: float, last: float, closer_is_lower: bool) -> str:
    change = last - first
    if abs(change) < FLAT_BAND:
        return "flat"
    return "closing" if (change < 0) == closer_is_lower else "diverging"


def ladder_sentences(documents: list[dict[str, Any]]) -> list[str]:
    """One sentence per claim, comparing the first and the last measured rung (never beyond them)."""
    if len(documents) < 2:
        return ["One rung measured so far: no curve yet."]
    first, last = documents[0], documents[-1]
    span = f"from {first['tokens'] / 1e6:.1f}M to {last['tokens'] / 1e6:.1f}M training tokens"
    out = []
    for p0, p1 in zip(first["pairs"], last["pairs"]):
        pair = f"{p0['small']} → {p0['large']}"
        if p0.get("control_definition") is not None and p1.get("control_definition") is not None:
            g0 = p0["novel_definition"] - p0["control_definition"]
            g1 = p1["novel_definition"] - p1["control_definition"]
            trend = "flat" if abs(g1 - g0) < FLAT_BAND else ("growing" if g1 > g0 else "shrinking")
            out.append(f"Novel latents, {pair}: {span} the margin of the novel fraction (by definition) over its "
                       f"cross-seed control goes from {g0:+.1%} to {g1:+.1%} ({trend}; pair {p0['novel_definition']:.1%}"
                       f" → {p1['novel_definition']:.1%}, control {p0['control_definition']:.1%} → "
                       f"{p1['control_definition']:.1%}).")
        e0, e1 = p0["path_excess"], p1["path_excess"]
        control = ""
        if p0.get("control_path_excess") is not None and p1.get("control_path_excess") is not None:
            control = (f"; the same path between two seeds of {p0['large']} goes from "
                       f"{1 + p0['control_path_excess']:.2f}x to {1 + p1['control_path_excess']:.2f}x")
        out.append(f"Monotone path, {pair}: the path's peak over its worse endpoint goes from {1 + e0:.2f}x to "
                   f"{1 + e1:.2f}x ({_trend(e0, e1, closer_is_lower=True)}; the paper's monotone path is 1.00x)"
                   f"{control}.")
        shares = [(d["tokens"] / 1e6, _share(p.get("granularity")), _share(p.get("control_granularity")))
                  for d in documents for p in d["pairs"] if (p["small"], p["large"]) == (p0["small"], p0["large"])]
        if any(a != "—" for _, a, _ in shares):
            out.append(f"Granularity, {pair}: the path becomes monotone once the largest group holds "
                       + ", ".join(f"{a} of L (control {b}) at {t:.1f}M" for t, a, b in shares)
                       + "; width needs finer groups than seed noise only where the pair's share is well below its "
                         "control's.")
    from canon_pl.study.ladder_results import PLATEAU_PER_DOUBLING, consistency_plateau

    reached, agreement = consistency_plateau(documents)
    out.append(f"Convergence: {agreement}; " + (
        f"the share stopped rising (less than {PLATEAU_PER_DOUBLING * 100:.0f} points per doubling at every width) at "
        f"{reached / 1e6:.1f}M tokens: read each claim there." if reached is not None else
        f"not plateaued (the rule: less than {PLATEAU_PER_DOUBLING * 100:.0f} points per doubling at every width): "
        f"every figure above may still move with training."))
    gaps = [(n, m["ev_training"] - m["ev_held_out"]) for n, m in last["members"].items()]
    worst = max(gaps, key=lambda g: g[1])
    out.append(f"Overfitting the cache: at {last['tokens'] / 1e6:.1f}M tokens the largest training minus held-out EV "
               f"is {worst[1]:+.4f} ({worst[0]}); " + ("passes over the cache overfit." if worst[1] > 0.01 else
                                                         "no member fits its training tokens noticeably better."))
    return out


def ladder_table(documents: list[dict[str, Any]]) -> list[str]:
    """A markdown table: per rung, each pair's novel fraction by definition and its control, the path peak, and the
    widest member's held-out EV and rows at init."""
    if not documents:
        return []
    pairs = [f"{p['small']}→{p['large']}" for p in documents[0]["pairs"]]
    head = ["tokens", "steps", *[f"{p} novel / control" for p in pairs], *[f"{p} path peak" for p in pairs],
            "EV held-out (each width)", "rows at init (widest)", "train + measure (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in documents:
        widths = sorted((m for m in d["members"].values() if m["folder"].isdigit()), key=lambda m: m["width"])
        cells = [f"{d['tokens'] / 1e6:.1f}M", str(d["steps"])]
        cells += [f"{p['novel_definition']:.1%} / " + ("—" if p.get("control_definition") is None
                                                       else f"{p['control_definition']:.1%}") for p in d["pairs"]]
        cells += [f"{1 + p['path_excess']:.2f}x" for p in d["pairs"]]
        cells.append(" / ".join(f"{m['ev_held_out']:.3f}" for m in widths))
        init = widths[-1].get("rows_at_init")
        cells.append("—" if init is None else f"{init:.1%}")
        wall = d.get("wall_seconds") or {}
        cells.append(f"{(wall.get('train', 0) + wall.get('measure', 0)) / 60:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ladder_section(documents: list[dict[str, Any]], figure: str | None = None) -> list[str]:
    """The report's section "Does scale close the gap?" (markdown lines)."""
    lines = ["## Does scale close the gap?", "",
             "The study's family trained on past its budget (`canon-pl ladder`), every figure measured at each rung "
             "on the same held-out tokens; the verdicts stay per rung and nothing is extrapolated.", ""]
    if figure:
        lines += [f"![the ladder's curves]({figure})", ""]
    lines += ladder_table(documents) + [""] + [f"- {s}" for s in ladder_sentences(documents)]
    return lines


__all__ = ["base_ladder_lines", "ladder_frame", "ladder_section", "ladder_sentences", "write_ladder_figures"]
