"""The study's report: ``<run>/report.md`` with PNG figures, read from the files the stages wrote (family exports,
stitching results, meta-SAE analysis, statistics, the training log); nothing is retrained. Figures are the viewer's
own Altair charts. Every claim gets a verdict with its control beside it (rules: :mod:`canon_pl.study.verdicts`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from canon_pl.study.stage_times import stage_times_lines
from canon_pl.io.atomic import atomic_write_text
from canon_pl.io.layout import RunLayout
from canon_pl.meta.analysis import FLOOR_NAMES, higher_floor
from canon_pl.stitching import settings_mismatch
from canon_pl.stitching.classify import stuck_at_init_fraction
from canon_pl.stats.readable import LOGIT_LENS_MIN_DEPTH, logit_lens_meaningful
from canon_pl.study.verdicts import (
    CONSISTENCY_THRESHOLD,
    GRANULARITY_RATIO,
    L0_TOLERANCE,
    MARGIN,
    META_MARGIN,
    MIN_SHARE,
    PAPER,
    large_l0,
    matryoshka_verdict,
    recommended_width,
    seed_consistency,
    study_verdicts,
)

REPORT_FILE = RunLayout.REPORT


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _save(chart: Any, path: Path) -> str:
    chart.save(str(path), scale_factor=1.5)  # vl-convert: offline PNG rendering of the Vega-Lite spec
    return path.name


def training_curves(run: Path) -> pd.DataFrame:
    """``step, series, value``: each pair's novel fraction (by definition) and its control's, as the
    ``StitchingCallback`` logged them at every validation (empty when it did not run)."""
    from canon_pl.viewer.runs import read_metrics

    metrics = read_metrics(run)
    rows = []
    for column in metrics.columns:
        parts = column.split("/")
        if len(parts) != 3 or parts[0] != "stitch" or parts[2] not in ("novel_fraction_definition",
                                                                        "control_novel_fraction_definition"):
            continue
        pair = parts[1].replace("_", " → ")
        series = f"{pair} (other seed)" if parts[2].startswith("control") else f"{pair} (smaller width)"
        for step, value in metrics[["step", column]].dropna().itertuples(index=False):
            rows.append({"step": int(step), "series": series, "value": float(value)})
    return pd.DataFrame(rows)


def family_frame(run: Path) -> pd.DataFrame:
    """One row per member of the family at ``run`` (seed controls included, ``member`` "width" or "seed <s>"): the
    viewer's run row and the share of its decoder rows still at their initialisation."""
    from canon_pl.io import read_family_manifest
    from canon_pl.viewer import find_runs

    manifest = read_family_manifest(run)
    members = {folder: "width" for folder in manifest["members"].values()}
    members.update({folder: f"seed {c['init_seed']}" for folder, c in manifest["controls"].items()})
    return pd.DataFrame([{**found.row(), "member": members[found.name],
                          "stuck_at_init_fraction": stuck_at_init_fraction(found.path)}
                         for found in find_runs(run) if found.name in members])  # not the meta-SAE beside them


def family_pairs(run: Path) -> list[dict[str, Any]]:
    """The loaded stitching results of the family's own adjacent pairs (``summary``, ``path_drawn``, ...), smallest
    first; a Matryoshka's prefixes below the run are another family (their own section)."""
    from canon_pl.viewer import find_stitching_results, load_pair

    loaded = [load_pair(found.path) for found in find_stitching_results(run)
              if found.path.parent == RunLayout(run).stitching]
    return sorted(loaded, key=lambda d: (d["summary"]["small"]["d_sae"], d["summary"]["large"]["d_sae"]))


def run_verdicts(family: pd.DataFrame, pairs: list[dict[str, Any]],
                 meta: dict[str, Any] | None) -> tuple[list[Any], tuple[bool, str]]:
    """The study's verdicts (:func:`canon_pl.study.verdicts.study_verdicts`) on a family (:func:`family_frame`), its
    pairs' summaries and its meta-SAE analysis: what the report and the viewer's pages state alike."""
    widths = family[family["member"] == "width"].sort_values("d_sae") if len(family) else family
    return study_verdicts([{"d_sae": int(r.d_sae), "explained_variance": getattr(r, "explained_variance", None),
                            "stuck_at_init_fraction": r.stuck_at_init_fraction} for r in widths.itertuples()],
                          pairs, meta)


def gather(run: Path, meta_dir: Path | None) -> dict[str, Any]:
    """Everything the report states, read from the run's files: ``family`` (one row per member, seed controls
    included), ``pairs`` (stitching summaries), ``paths`` (every pair's path, thinned), ``curves`` (novel fractions
    over training), ``meta`` (the meta-SAE analysis) and ``examples`` (decompositions with the latents' contexts)."""
    from canon_pl.meta import read_meta_analysis

    loaded = family_pairs(run)
    pairs = [d["summary"] for d in loaded]
    paths = [d["path_drawn"].assign(pair=f"{d['summary']['small']['d_sae']} → {d['summary']['large']['d_sae']}")
             for d in loaded]
    meta = read_meta_analysis(meta_dir, arrays=True) if meta_dir is not None and meta_dir.is_dir() else None
    return {"family": family_frame(run), "pairs": pairs, "paths": pd.concat(paths) if paths else pd.DataFrame(),
            "curves": training_curves(run), "meta": meta,
            "examples": _examples(run, meta_dir, meta) if meta is not None else [],
            "matryoshka": matryoshka_facts(run)}


def matryoshka_facts(run: Path) -> dict[str, Any] | None:
    """The Matryoshka comparison beside the family (``None`` when the run has none): ``widths``, ``control_seeds``,
    ``pairs`` (per adjacent pair of prefixes its stitching ``summary`` and the classes of the latents it ``added``)
    and ``meta`` (the meta-SAE analysis of its widest level, or ``None``)."""
    from canon_pl.io import read_family_manifest
    from canon_pl.io.family import MANIFEST_FILE
    from canon_pl.meta import read_meta_analysis
    from canon_pl.stitching import read_stitching_results
    from canon_pl.stitching.nested import added_latent_classes

    prefixes = RunLayout(run).matryoshka_prefixes
    if not (prefixes / MANIFEST_FILE).is_file():
        return None
    manifest = read_family_manifest(prefixes)
    widths = [int(w) for w in manifest["widths"]]
    pairs = []
    for small, large in zip(widths, widths[1:]):
        path = RunLayout(prefixes).stitching_pair(small, large)
        if path.is_file():
            summary = read_stitching_results(path, arrays=True)
            pairs.append({"summary": summary, "added": added_latent_classes(summary.pop("arrays"), small)})
    meta_dir = RunLayout(prefixes).meta_sae(widths[-1])
    return {"widths": widths, "pairs": pairs, "meta": read_meta_analysis(meta_dir) if meta_dir.is_dir() else None,
            "control_seeds": sorted({c["init_seed"] for c in manifest["controls"].values()})}


def _context_text(stats: Any, width: str, latent: int, contexts: Any, strings: dict[int, str], n: int) -> list[str]:
    """The ``n`` top contexts of ``latent`` (a window ending one token after the peak), markdown-safe."""
    shown = []
    for flat in stats.array(width, "top_ids")[latent].long().tolist()[:n]:
        if flat < 0 or flat >= contexts.numel():
            continue
        ctx, pos = divmod(flat, contexts.shape[1])
        window = contexts[ctx, max(pos - 8, 0):pos + 2].tolist()
        text = "".join(strings.get(int(t), f"<{int(t)}>") for t in window)
        shown.append(text.replace("\n", "⏎").replace("|", "\\|").replace("`", "'"))
    return shown


def viewer_latent_link(run: Path, width: str, latent: int) -> str:
    """The URL of ``latent`` of the run's ``width`` member in the viewer started on the run's parent folder as the
    report says (``canon-pl view --checkpoints <parent>``, on its default address)."""
    from canon_pl.viewer.links import LOCAL_VIEWER, latent_url

    return f"{LOCAL_VIEWER}/{latent_url(run.name, width, latent)}"


def _examples(run: Path, meta_dir: Path, meta: dict[str, Any], n: int = 3) -> list[dict[str, Any]]:
    """The ``n`` most readable base latents (:mod:`canon_pl.stats.readable`) built from 2 to 2k meta-latents, each
    with its top contexts and, per meta-latent (largest first), its activation, the other base latents that use it
    most with each one's top context (how the authors' dashboard describes a meta-latent), and its promoted tokens
    where :func:`logit_lens_meaningful` allows them."""
    from canon_pl.stats import LatentStatistics, StatsError
    from canon_pl.stats.readable import readability_scores
    from canon_pl.viewer.search import top_centre_tokens

    decomposition = meta["decomposition"]
    width = str((meta.get("base") or {}).get("width"))
    try:
        stats = LatentStatistics.open(RunLayout(run).stats)
        meta_stats_dir = RunLayout(meta_dir).stats
        meta_stats = LatentStatistics.open(meta_stats_dir) if meta_stats_dir.is_dir() else None
        frequency = stats.frequencies(width)
        centre = top_centre_tokens(stats, width)
    except StatsError:
        return []
    strings = stats.token_strings()
    contexts = stats.contexts()
    scores = readability_scores(frequency, centre)
    per_latent = decomposition.meta_per_latent()
    k = int(meta.get("k") or 4)
    typical = [j for j in range(decomposition.n_base) if 2 <= int(per_latent[j]) <= 2 * k and scores[j] >= 0]
    order = sorted(typical, key=lambda j: (-float(scores[j]), -float(frequency[j])))
    examples = []
    lens = logit_lens_meaningful(stats.index.get("hook_point"), stats.index.get("n_layers"))
    for j in order[:n]:
        shown = _context_text(stats, width, j, contexts, strings, 3)
        parts = []
        for m, value in decomposition.of_latent(j):
            promoted = []
            if meta_stats is not None and lens:
                ids = meta_stats.latent(meta_stats.members[0], m)["promoted_tokens"][:5].tolist()
                promoted = [meta_stats.token_strings().get(int(t), f"<{int(t)}>") for t in ids]
            siblings = [b for b, _ in decomposition.users_of(m) if b != j][:5]
            users = [{"latent": b, "context": (_context_text(stats, width, b, contexts, strings, 1) or [""])[0]}
                     for b in siblings[:3]]
            parts.append({"meta": m, "activation": value, "promoted": promoted, "siblings": siblings,
                          "users": users})
        examples.append({"latent": j, "frequency": float(frequency[j]), "score": float(scores[j]),
                         "contexts": shown, "meta": parts, "logit_lens": lens,
                         "viewer": viewer_latent_link(run, width, j)})
    return examples


def _family_section(family: pd.DataFrame, figures: Path) -> list[str]:
    from canon_pl.viewer.charts import family_charts

    columns = [c for c in ("d_sae", "member", "l0", "explained_variance", "ce_recovered", "dead_fraction",
                           "stuck_at_init_fraction") if c in family.columns]
    shown = family[columns].sort_values(["d_sae", "member"])
    lines = ["## The family", "", "Held-out explained variance per member (seed controls included) and the fraction "
             "of each decoder's rows still within cosine 0.7 of their random initialisation.", "",
             _markdown_table(shown), ""]
    widths_only = family[family["member"] == "width"]
    for i, chart in enumerate(family_charts(widths_only)):
        lines.append(f"![family {i}](report/{_save(chart, figures / f'family_{i}.png')})")
    return lines + [""]


def _stitching_section(facts: dict[str, Any], figures: Path) -> list[str]:
    from canon_pl.viewer.charts import novel_vs_control_chart, stitching_path_chart, training_curve_chart

    rows, bars = [], []
    for s in facts["pairs"]:
        c, control = s["classes"], s.get("control") or {}
        pair = f"{s['small']['d_sae']} → {s['large']['d_sae']}"
        rows.append({"pair": pair, "novel (definition)": c["novel_fraction_definition"],
                     "control (definition)": control.get("novel_fraction_definition"),
                     "novel (cosine)": c["novel_fraction_cosine"], "novel": s["n_novel"],
                     "reconstruction": s["n_reconstruction"],
                     "control (cosine)": control.get("novel_fraction_cosine"),
                     "agreement": c["agreement"], "median max cos": c["median_max_cos"],
                     "control median max cos": control.get("median_max_cos"),
                     "stuck at init": c["stuck_at_init_fraction"], "novel among moved": c["novel_fraction_cosine_moved"],
                     "novel (definition), per-chunk mean ± std": _spread_text(s.get("spread")),
                     "control, per-chunk mean ± std": _spread_text(control.get("spread")),
                     "path peak / worse endpoint": 1 + s["path_excess"] if s.get("path_excess") is not None else None,
                     "control path peak": (1 + control["path_excess"]) if control.get("path_excess") is not None
                     else None,
                     "monotone steps": s["path_monotone_fraction"],
                     "FVU S": s["fvu_small"], "FVU L": s["fvu_large"],
                     # Hungarian-matched decoder cosine (Paulo & Belrose 2025): S against L, L against its other seed
                     "matched cos S↔L": (s.get("consistency") or {}).get("mean_matched_cosine"),
                     "S kept in L at 0.9": ((s.get("consistency") or {}).get("shared_at") or {}).get("0.9"),
                     "matched cos across seeds": (control.get("consistency") or {}).get("mean_matched_cosine"),
                     "shared across seeds at 0.9": ((control.get("consistency") or {}).get("shared_at") or {}).get(
                         "0.9")})
        for measure, key in (("definition", "novel_fraction_definition"), ("cosine", "novel_fraction_cosine")):
            bars.append({"pair": pair, "measure": measure, "against": "smaller width", "fraction": c[key]})
            if control:
                bars.append({"pair": pair, "measure": measure, "against": "other seed (control)",
                             "fraction": control[key]})
    n_tokens = facts["pairs"][0]["n_tokens"] if facts["pairs"] else 0
    lines = ["## Stitching: novel vs reconstruction latents", "",
             f"On {n_tokens:,} held-out tokens. *Novel (definition)*: the share of L's firing latents that lower S's "
             "MSE when added alone (the paper's definition); *novel (cosine)*: no S decoder row within cosine 0.7 "
             "(the proxy), with *novel* / *reconstruction* its counts; *agreement*: how often the two agree. The "
             "*control* columns are the same measurements of L against an SAE of its own width from another init "
             "seed: what seeds alone give. *Per-chunk*: the definitional fraction on disjoint chunks of the "
             "held-out tokens (token noise). *Path peak / worse endpoint*: the stitched path's highest MSE over the "
             "worse of S's and L's (1 = it stays between them, the paper's monotone path); *control path peak*: the "
             "same construction between two seeds of L's width, what a path does when only the seed differs.", "",
             _markdown_table(pd.DataFrame(rows)), ""]
    mismatch = settings_mismatch({f"{s['small']['d_sae']} → {s['large']['d_sae']}": s for s in facts["pairs"]})
    if mismatch:
        lines += [f"> **Warning:** {mismatch}.", ""]
    if bars:
        lines.append(f"![novel vs control](report/{_save(novel_vs_control_chart(pd.DataFrame(bars)), figures / 'novel_fraction.png')})")
    if len(facts["paths"]):
        chart = stitching_path_chart(facts["paths"], "stitching paths (FVU vs latents)")
        lines.append(f"![stitching paths](report/{_save(chart, figures / 'paths.png')})")
    lines += _granularity_lines(facts["pairs"], figures)
    if len(facts["curves"]):
        chart = training_curve_chart(facts["curves"], "novel fraction (definition) over training")
        lines += ["", "The novel fraction by definition at every validation of the family's training, against the "
                  "smaller width and against another seed: a gap that opens as training goes on is about width; one "
                  "that never opens is seed noise.", "",
                  f"![over training](report/{_save(chart, figures / 'novel_over_training.png')})"]
    return lines + [""]


def _spread_text(spread: dict[str, Any] | None) -> str | None:
    if not spread or spread.get("mean") is None:
        return None
    std = spread.get("std")
    return f"{spread['mean']:.3f} ± {std:.3f}" if std is not None else f"{spread['mean']:.3f}"


def _granularity_lines(pairs: list[dict[str, Any]], figures: Path) -> list[str]:
    """The path's peak against group granularity for each pair and its cross-seed control (when measured)."""
    from canon_pl.viewer.charts import granularity_chart
    from canon_pl.viewer.stitching import granularity_points

    frame = granularity_points(pairs)
    if frame.empty:
        return []
    lines = ["", "### The path at every granularity of grouping", "",
             "The path walked again with its latents grouped ever more coarsely: by decoder cosine at falling "
             "thresholds, then each latent with its best partner by reconstruction overlap (the cosine of two "
             "latents' contributions to the reconstruction over the held-out tokens), then every overlapping pair "
             "(the most-overlapping groups merged first) until the path stays within 5 % of its worse endpoint. The "
             "paper's claim holds when the cross-width path becomes monotone at finer groups (a smaller largest "
             "group) than the same construction between two seeds of one width; it is refuted when both need the "
             "same.", ""]
    summary = []
    for s in pairs:
        pair = f"{s['small']['d_sae']} → {s['large']['d_sae']}"
        mine, control = s.get("granularity") or {}, (s.get("control") or {}).get("granularity") or {}
        summary.append({"pair": pair,
                        "monotone at largest group share (pair)": mine.get("monotone_largest_group_share"),
                        "(control)": control.get("monotone_largest_group_share")})
    lines += [_markdown_table(pd.DataFrame(summary)), "",
              f"![granularity](report/{_save(granularity_chart(frame), figures / 'granularity.png')})", ""]
    return lines


def _meta_section(meta: dict[str, Any], examples: list[dict[str, Any]]) -> list[str]:
    base = meta.get("base") or {}
    floors = meta.get("floors") or {}
    lines = ["## Meta-SAE", "", f"Base: the {base.get('width')}-latent SAE; {meta['n_meta']} meta-latents, k = "
             f"{meta.get('k')}. FVE is read against four floors, the same meta-SAE trained on: random unit rows and "
             "the base's initial decoder (both isotropic), Gaussian rows with the decoder's own mean and covariance, "
             "and the decoder's rows with each principal coordinate shuffled across rows (both keep its "
             "anisotropy: only structure beyond it, such as rows composed of a few shared directions, lifts the FVE "
             "above them); and against the PCA cap (the variance of the rows in their top principal directions: the "
             "most a reconstruction in that many dimensions can explain).", "",
             _markdown_table(pd.DataFrame([{
                 "FVE": meta["fve"], "FVE uncentred": meta.get("fve_uncentred"),
                 **floor_columns(floors),
                 f"PCA cap (top {(meta.get('pca_cap') or {}).get('m')})": (meta.get("pca_cap") or {}).get("fraction"),
                 f"PCA top {meta.get('k')}": (meta.get("pca_cap") or {}).get("top_k_fraction"),
                 "meta-latents per latent": meta["mean_meta_per_latent"], "dead meta-latents": meta["dead_meta_fraction"],
             }])), ""]
    if meta.get("width_sweep"):
        lines += _width_sweep_section(meta)
    if examples:
        lines += ["### Example decompositions", "", "Chosen by a fixed rule (canon_pl/stats/readable.py): latents that "
                  "fire on 0.05–2% of held-out tokens, ranked by the share of their top examples that peak on the "
                  "same token, among those built from 2 to 2k meta-latents. Each shows its top contexts (the peak "
                  "token last), then its meta-latents, each described by the other base latents that use it most "
                  "(with the top context of each): what the meta-latent shares across latents. Promoted tokens "
                  f"(logit lens) are shown only at hook points at least {LOGIT_LENS_MIN_DEPTH:.0%} through the "
                  "model; at a mid layer they read as sub-word noise.", ""]
    for example in examples:
        lines.append(f"**latent {example['latent']}** (fires on {example['frequency']:.2%} of tokens, top-example "
                     f"concentration {example['score']:.0%}; [in the viewer]({example['viewer']}))")
        for text in example["contexts"]:
            lines.append(f"- `…{text}`")
        for part in example["meta"]:
            users = "; ".join(f"{u['latent']} `…{u['context']}`" for u in part["users"]) or "no other latent"
            promoted = (f"; promotes {', '.join(repr(t) for t in part['promoted'])}" if part["promoted"] else "")
            lines.append(f"- meta-latent {part['meta']} ({part['activation']:.2f}): also used most by {users}"
                         f"{promoted}")
        lines.append("")
    return lines


def floor_columns(floors: dict[str, Any]) -> dict[str, Any]:
    """``{"floor: <name>": FVE}`` for every floor of :data:`FLOOR_NAMES` (``None`` where it was not measured)."""
    return {f"floor: {name.replace('_', ' ')}": floors.get(name) for name in FLOOR_NAMES}


def _width_sweep_section(meta: dict[str, Any]) -> list[str]:
    """The meta-SAE read at several widths, the paper's 3 × d_in among them, each against its own floors."""
    floors = meta.get("floors") or {}
    rows = [{"meta-latents": e["n_meta"], "× d_in": e["per_d_in"], "base rows per meta-latent": e["rows_per_meta"],
             "FVE": e["fve"], **floor_columns(e["floors"]), "PCA cap": e["pca_cap"],
             "FVE − higher floor": e["fve"] - higher_floor(e["floors"])}
            for e in meta["width_sweep"]]
    if higher_floor(floors) is not None:
        rows.append({"meta-latents": f"{meta['n_meta']} (the meta-SAE above)", "× d_in": meta["n_meta"] / meta["d_in"],
                     "base rows per meta-latent": meta["n_base"] / meta["n_meta"], "FVE": meta["fve"],
                     **floor_columns(floors), "PCA cap": (meta.get("pca_cap") or {}).get("fraction"),
                     "FVE − higher floor": meta["fve"] - higher_floor(floors)})
    rows.append({"meta-latents": "the paper: 2304 on 49,152 rows", "× d_in": PAPER["meta_per_d_in"],
                 "base rows per meta-latent": PAPER["base_rows_per_meta"], "FVE": PAPER["fve"]})
    return ["### Meta-SAE width sweep", "",
            f"The paper's meta-SAE is {PAPER['meta_per_d_in']:g} × d_in wide with {PAPER['base_rows_per_meta']:g} base "
            "rows per meta-latent; a base narrower than 64 × d_in cannot match both ratios, so the same meta-SAE (k, "
            "steps, initialisation) is trained from scratch at several widths, each read against its own floors. "
            "Where a floor comes close to the FVE, the width explains random rows as well: capacity, not structure.",
            "", _markdown_table(pd.DataFrame(rows)), ""]


def matryoshka_tables(facts: dict[str, Any]) -> dict[str, Any]:
    """What the report's Matryoshka section shows, as rows (the committed comparison stores exactly these):
    ``widths``, ``control_seeds``, ``ev_rows`` (held-out EV per width, prefix against independent SAE), ``pair_rows``
    (per pair the novel fractions of the latents a prefix adds and of the independent larger SAE, each with its
    cross-seed control, the paths and the seeds' shares) and ``meta_rows`` (the meta-SAE of its widest level beside
    the family's; empty without one)."""
    from canon_pl.stitching.nested import by_widths, held_out_ev

    nested, independent = facts["matryoshka"], facts["pairs"]
    ev_independent, ev_nested = held_out_ev(independent), held_out_ev([n["summary"] for n in nested["pairs"]])
    ev_rows = [{"width": w, "independent SAE": ev_independent.get(w), "Matryoshka prefix": ev_nested.get(w),
                "prefix − independent": (ev_nested[w] - ev_independent[w]) if w in ev_nested and w in ev_independent
                else None} for w in nested["widths"]]
    by_pair = by_widths(independent)
    pair_rows = []
    for n in nested["pairs"]:
        s, a = n["summary"], n["added"]
        p = by_pair.get((s["small"]["d_sae"], s["large"]["d_sae"]))
        pair_rows.append({
            "pair": f"{s['small']['d_sae']} → {s['large']['d_sae']}",
            "independent: novel (definition)": p["classes"]["novel_fraction_definition"] if p else None,
            "independent: control": ((p or {}).get("control") or {}).get("novel_fraction_definition"),
            "independent: path excess": (p or {}).get("path_excess"),
            "Matryoshka: added latents": a["n_added"],
            "added: novel (definition)": a["novel_fraction_definition"],
            "added: control": a["control_novel_fraction_definition"],
            "added: novel (cosine)": a["novel_fraction_cosine"],
            "Matryoshka: path excess": s.get("path_excess"), "Matryoshka: monotone steps": s["path_monotone_fraction"],
            "seeds share (prefix)": seed_consistency(s), "seeds share (independent)": seed_consistency(p or {}),
            "L0 prefix / independent": f"{_fmt(large_l0(s), 1)} / {_fmt(large_l0(p or {}), 1)}"})
    meta, family_meta = nested.get("meta"), facts.get("meta")
    meta_rows = []
    if meta is not None:
        meta_rows = [{"meta-SAE on": f"Matryoshka, all {meta['n_base']} latents", "meta-latents": meta["n_meta"],
                      "FVE": meta["fve"], "higher floor": higher_floor(meta.get("floors") or {})}]
        if family_meta is not None:
            meta_rows.insert(0, {"meta-SAE on": f"independent {family_meta['n_base']}-latent SAE",
                                 "meta-latents": family_meta["n_meta"], "FVE": family_meta["fve"],
                                 "higher floor": higher_floor(family_meta.get("floors") or {})})
    return {"widths": nested["widths"], "control_seeds": nested["control_seeds"], "ev_rows": ev_rows,
            "pair_rows": pair_rows, "meta_rows": meta_rows}


def _matryoshka_section(tables: dict[str, Any], verdict: Any, source: str | None = None) -> list[str]:
    """The Matryoshka SAE's prefixes against the independently trained widths (:func:`matryoshka_tables`), with
    ``source`` (where committed results came from) when the run has no Matryoshka of its own."""
    seeds = ", ".join(map(str, tables["control_seeds"])) or "none"
    widths = tables["widths"]
    lines = ["## Matryoshka prefixes against independent widths", "",
             *([source, ""] if source else []),
             f"One Matryoshka BatchTopK SAE of {widths[-1]} latents trained beside the family (same data, "
             f"steps, k and optimiser) whose nested prefixes are the family's widths {widths[:-1]}, and the "
             f"same SAE from init seed(s) {seeds} as its cross-seed control. A prefix of m latents *is* the first m "
             "latents of every larger prefix, so only the latents a larger prefix adds can be novel or re-split the "
             "smaller one: the *added* columns classify those (the definition: they lower the smaller prefix's MSE "
             "when added alone), against the smaller prefix and against the other seed's prefix of the larger width; "
             "they are trained on the prefix's residual, so they lower its error by construction and describe the "
             "Matryoshka rather than decide the verdict. The verdict rests on the *seeds share* columns: the share "
             "of a width's latents that the other seed's SAE of that width matches (Hungarian, cosine ≥ "
             f"{CONSISTENCY_THRESHOLD}), prefix against independent SAE, where their L0s agree. "
             "The independent columns are the family's stitching above. EV is 1 − FVU on the same held-out tokens.",
             "", _markdown_table(pd.DataFrame(tables["ev_rows"])), "",
             _markdown_table(pd.DataFrame(tables["pair_rows"])), "",
             f"**{verdict.verdict}** — {verdict.why}.", ""]
    if tables["meta_rows"]:
        lines += ["The meta-SAE of the Matryoshka's widest level, with the same settings as the family's (its floors "
                  "trained the same way):", "", _markdown_table(pd.DataFrame(tables["meta_rows"])), ""]
    return lines


def arm_description(run: Path) -> str:
    """The family's architecture and training budget in words, from ``family.json`` and the widest member's cfg.json,
    e.g. "BatchTopK (k = 32), 6,144,000 training tokens"."""
    from canon_pl.io import read_export_config, read_family_manifest
    from canon_pl.sae.registry import describe_sae

    manifest = read_family_manifest(run)
    widest = manifest["members"][str(manifest["widths"][-1])]
    name = describe_sae(read_export_config(run / widest).get("sae") or {})
    return f"{name}, {int(manifest.get('tokens') or 0):,} training tokens per member"


def _cache_text(cache: Path) -> str:
    """The text an activation cache was captured from, in words (its digest and packages, or why there is none)."""
    from canon_pl.data.shards import ShardIndex
    from canon_pl.lm.text_identity import identity_text

    return (f"{identity_text(ShardIndex.load(cache).text_identity)}, the activations of `{cache}`. A named text is "
            f"what its package installs: a package update changes the documents and moves the figures within their "
            f"token noise (README)")


def _evaluation_section(run: Path, pairs: list[dict[str, Any]]) -> list[str]:
    """"Choosing a width": SAEBench's core metrics per member and seed control (``canon-pl evaluate``), nothing when
    the run has not been evaluated."""
    from canon_pl.metrics.summary import read_summary
    from canon_pl.viewer.widths import variant_text

    path = RunLayout(run).evaluation / "summary.json"
    if not path.is_file():
        return []
    summary = read_summary(path)
    names = {"explained_variance": "EV", "cossim": "cos(x, x̂)", "l2_ratio": "‖x̂‖/‖x‖",
             "relative_reconstruction_bias": "rel. bias", "l0": "L0", "frac_alive": "alive",
             "average_max_decoder_cosine_sim": "max dec. cos", "ce_loss_score": "CE score", "kl_div_score": "KL score",
             "sae_top_1_test_accuracy": "1-sparse probe", "sae_top_5_test_accuracy": "5-sparse probe",
             "mean_full_absorption_score": "absorbed"}
    rows = [{"SAE": r["name"], "width": r["width"], "seed control": "yes" if r["seed_control"] else "",
             **({"variant": variant_text(r.get("variant"))} if any(x.get("variant") for x in summary["rows"]) else {}),
             **{names.get(k, k): v for k, v in r["metrics"].items()}} for r in summary["rows"]]
    spread = summary.get("seed_spread") or {}
    lines = ["## Choosing a width: SAEBench's core metrics", "",
             f"Every member and seed control on {summary['n_tokens']:,} held-out tokens of `{summary['data']}` "
             f"(`canon-pl evaluate`; one SAEBench-shaped `*.core.json` per SAE in `{RunLayout.EVALUATION}/`, the definitions in "
             f"docs/design.md). CE / KL score: the share of the zero-ablation loss the spliced SAE recovers (empty on "
             f"an activation cache). Consistency across seeds and widths is in the stitching table above.", "",
             _markdown_table(pd.DataFrame(rows)), ""]
    if spread:
        lines += ["Seed spread (max − min over the seeds of one width): " + "; ".join(
            f"{width}: EV {_fmt(s.get('explained_variance'))}, L0 {_fmt(s.get('l0'), 2)}, alive "
            f"{_fmt(s.get('frac_alive'))}" for width, s in spread.items()) + ".", ""]
    lines += _width_l0_lines(summary)
    lines += _probing_lines(summary)
    width, why = recommended_width(summary["rows"], spread, pairs)
    if width is not None:
        lines += [f"**Recommended width: {width:,}.** Rule (canon_pl/study/verdicts.py `recommended_width`): climb from "
                  f"the smallest width while each step beats the wider width's seed spread in held-out EV and its "
                  f"novel fraction beats its cross-seed control by ≥ {MARGIN:.0%}; the first step that fails stops "
                  f"the climb (past it a wider SAE mostly re-splits the narrower one's latents, and what it adds is "
                  f"within what reseeding changes). It describes this run's budget: an undertrained family earns "
                  f"fewer steps.", "", *[f"- {line}" for line in why], ""]
    return lines


def _width_l0_lines(summary: dict[str, Any]) -> list[str]:
    """Width × L0 (a family with sparsity variants): per width, EV against L0, and what a doubling of the width
    and a change of the sparsity setting each buy at the other held fixed. Nothing without variants."""
    from canon_pl.viewer.widths import variant_text

    rows = [r for r in summary["rows"] if not r["seed_control"]]
    if not any(r.get("variant") for r in rows):
        return []
    grid = {(r["width"], variant_text(r.get("variant")) or "the family's"): r["metrics"] for r in rows}
    settings = sorted({s for _, s in grid}, key=lambda s: (s != "the family's", s))
    widths = sorted({w for w, _ in grid})
    lines = ["### Width × L0", "",
             "The family's sparsity variants: each width trained again with one sparsity setting changed (same "
             "initialisation, same batches), so a gain with width can be told from a gain with L0. Held-out EV (L0):",
             ""]
    for setting in settings:
        cells = [f"{w:,}: {_fmt(grid[(w, setting)].get('explained_variance'))} "
                 f"({_fmt(grid[(w, setting)].get('l0'), 1)})" for w in widths if (w, setting) in grid]
        lines.append(f"- {setting} settings — " + "; ".join(cells))
    steps = []
    for setting in settings:
        for a, b in zip(widths, widths[1:]):
            if (a, setting) in grid and (b, setting) in grid:
                small, large = grid[(a, setting)], grid[(b, setting)]
                steps.append(f"{a:,} → {b:,} at {setting} settings: EV "
                             f"{large['explained_variance'] - small['explained_variance']:+.3f}, L0 "
                             f"{_fmt(small.get('l0'), 1)} → {_fmt(large.get('l0'), 1)}")
    denser = []
    for width in widths:
        by_l0 = sorted((grid[(width, setting)]["l0"], setting) for setting in settings if (width, setting) in grid)
        for (_, a), (_, b) in zip(by_l0, by_l0[1:]):
            small, large = grid[(width, a)], grid[(width, b)]
            denser.append(f"{width:,} from {a} to {b} settings: EV "
                          f"{large['explained_variance'] - small['explained_variance']:+.3f}, L0 "
                          f"{_fmt(small.get('l0'), 1)} → {_fmt(large.get('l0'), 1)}")
    return lines + ["", "Each step in width at one setting: " + "; ".join(steps) + ".",
                    "", "Each step in L0 at one width: " + "; ".join(denser) + ".", ""]


def _width_l0_results_lines(path: Path) -> list[str]:
    """Width × L0 from a committed evaluation summary of a family with sparsity variants (nothing when there is
    none yet, or when the summary has no variants)."""
    from canon_pl.metrics.summary import read_summary

    if not path.is_file():
        return []
    summary = read_summary(path)
    lines = _width_l0_lines(summary)
    if not lines:
        return []
    return ["## Width × L0", "", f"From `{path}` (the evaluation of `{summary['run']}` on {summary['n_tokens']:,} "
            f"held-out tokens of `{summary['data']}`, committed; its family trains beside, not inside, `make main`).",
            "", *lines[2:]]


def _carrier_text(carrier: dict[str, Any] | None) -> str:
    if not carrier:
        return "—"
    text = f"#{carrier['latent']}" + (f" ({carrier['class']})" if carrier.get("class") else "")
    partner = carrier.get("seed_partner")
    if partner:
        text += (f"; other seed #{partner['latent']} at cos {partner['cosine']:.2f}"
                 f"{', its best too' if partner['is_its_best_latent'] else ''}")
    return text


def _probing_lines(summary: dict[str, Any]) -> list[str]:
    """k-sparse probing per SAE and task (``canon-pl evaluate`` with text data), nothing without it."""
    probing = summary.get("probing")
    if not probing:
        return []
    tasks = [t for t, info in probing["tasks"].items() if info.get("skipped") is None]
    ceiling = "; ".join(f"{t} {_fmt(probing['tasks'][t]['llm_test_accuracy'])}" for t in tasks)
    rows = []
    for r in summary["rows"]:
        row: dict[str, Any] = {"SAE": r["name"], "width": r["width"]}
        for task in tasks:
            result = (r.get("probing") or {}).get(task) or {}
            accuracy = result.get("top_k_accuracy") or {}
            row[f"{task} k=1"], row[f"{task} k=5"] = accuracy.get("1"), accuracy.get("5")
            row[f"{task} absorbed"] = (result.get("absorption") or {}).get("absorption_rate")
            row[f"{task}: best latent"] = _carrier_text(result.get("carrier"))
        rows.append(row)
    skipped = [f"{t} ({info['skipped']})" for t, info in probing["tasks"].items() if info.get("skipped")]
    return ["### Usefulness per width: k-sparse probing and absorption", "",
            "Balanced held-out accuracy (0.5 is chance) of a logistic regression on the k latents whose mean "
            "activation differs most between a label's positive and negative tokens (Gurnee et al. 2023, as "
            "SAEBench's `sparse_probing`; labels read off the reST text: docs/design.md 1.4). The best latent is "
            "the one a 1-sparse probe uses, with its class in the stitching against the next narrower member and "
            "its nearest decoder row in the other seed; absorbed: the share of positive test tokens on which that "
            "latent is silent while another latent along the label's mean-difference direction fires (Chanin et al. "
            "2024). "
            "The ceiling, a probe on all the raw activations: "
            f"{ceiling or 'no task'}." + (f" Not probed: {'; '.join(skipped)}." if skipped else ""), "",
            _markdown_table(pd.DataFrame(rows)), ""] if tasks else []


def _ladder_lines(results: Path, figures: Path) -> list[str]:
    """The ladder's section from its committed rungs (nothing when none is committed yet), its curves redrawn into
    the report's figures."""
    from canon_pl.study.ladder_results import finished_rungs
    from canon_pl.study.ladder_report import ladder_section, write_ladder_figures

    documents = finished_rungs(results) if results.is_dir() else []
    if not documents:
        return []
    figure = write_ladder_figures(documents, figures)
    (figures / "summary.md").unlink(missing_ok=True)
    return [line.replace("](curves.png)", "](report/curves.png)") for line in ladder_section(documents, figure.name)]


VERDICT_CLAIMS = {"A wider SAE has latents": "novel_latents", "Stitching interpolates": "monotone_path",
                  "Latents decompose": "meta_latents"}
"""The start of each verdict's claim (canon_pl/study/verdicts.py) and its key in a calibration."""


def _verdict_rows(verdicts: list[Any], calibration_results: str | os.PathLike | None) -> list[dict[str, str]]:
    """The verdict table's rows; with a calibration each opens with its instrument's score on the known answer."""
    rows = [v.row() for v in verdicts]
    if calibration_results is None:
        return rows
    from canon_pl.calibration.report import claim_scores, read_calibration

    scores = claim_scores(read_calibration(calibration_results))
    keys = [next((key for start, key in VERDICT_CLAIMS.items() if row["claim"].startswith(start)), None)
            for row in rows]
    return [{"claim": row["claim"], "instrument on a known answer": scores.get(key, "not calibrated yet"),
             **{k: v for k, v in row.items() if k != "claim"}} for row, key in zip(rows, keys)]


def _matryoshka_comparison(run: Path, facts: dict[str, Any], trained: bool, reason: str,
                           matryoshka_results: str | os.PathLike | None) -> tuple[dict[str, Any], Any, str | None] | None:
    """(tables, verdict, where committed tables came from or ``None``) of the Matryoshka comparison: the run's own
    (written to ``matryoshka_results`` when given), else the committed one at ``matryoshka_results``, else ``None``."""
    from canon_pl.study.matryoshka_results import (
        committed_verdict,
        comparison_document,
        read_comparison,
        source_line,
        write_comparison,
    )

    if facts["matryoshka"] is not None:
        verdict = matryoshka_verdict(facts["pairs"], facts["matryoshka"]["pairs"], trained,
                                     f"preconditions fail: {reason}")
        tables = matryoshka_tables(facts)
        if matryoshka_results is not None:
            write_comparison(matryoshka_results, comparison_document(run, tables, verdict))
        return tables, verdict, None
    if matryoshka_results is None or not Path(matryoshka_results).is_file():
        return None
    document = read_comparison(matryoshka_results)
    return document, committed_verdict(document, matryoshka_results), source_line(document, matryoshka_results)


def _rules_text(with_matryoshka: bool) -> str:
    """The verdicts' rules as the report states them under its table (canon_pl/study/verdicts.py)."""
    return (f"Rules (canon_pl/study/verdicts.py): every claim is *inconclusive* unless held-out EV rises with width and no "
             f"member keeps half its decoder rows at their initialisation. Novel latents: reproduced when the novel "
             f"fraction by definition exceeds the cross-seed control's by ≥ {MARGIN:.0%} for every pair and "
             f"reconstruction latents are ≥ {MIN_SHARE:.0%}. Path: reproduced when every path stays within "
             f"{MARGIN:.0%} of its worse endpoint and L beats S (the control: the same path between two seeds of L's "
             f"width). Finer groups across widths: supported when every pair becomes monotone at a largest group at "
             f"most 1/{GRANULARITY_RATIO:g} of its cross-seed control's. Meta-SAE: reproduced when FVE exceeds every "
             f"floor (isotropic and anisotropy-matched) by ≥ {META_MARGIN:.2f}." + (f" Matryoshka: more canonical when, at every width whose prefix and "
             f"independent SAE have held-out L0s within {L0_TOLERANCE:.0%} of each other, the share of the prefix's "
             f"latents matched by the other seed's prefix (Hungarian, cosine ≥ {CONSISTENCY_THRESHOLD}) exceeds the "
             f"independent SAE's by ≥ {MARGIN:.0%} (less canonical when it falls short by as much everywhere)."
             if with_matryoshka else ""))


def write_report(run: str | os.PathLike, meta_dir: str | os.PathLike | None = None,
                 ladder_results: str | os.PathLike | None = None,
                 width_l0_results: str | os.PathLike | None = None,
                 calibration_results: str | os.PathLike | None = None,
                 cache: str | os.PathLike | None = None,
                 matryoshka_results: str | os.PathLike | None = None) -> Path:
    """Write ``<run>/report.md`` and its figures (``<run>/report/*.png``); returns the report's path.
    ``calibration_results`` (``canon-pl calibrate``'s folder) opens each claim with its instrument's score on a
    known answer and adds the calibration section after the verdicts.
    ``ladder_results`` (a ladder's committed rungs, ``canon-pl ladder``) adds the section "does scale close the
    gap?" with its curves; ``width_l0_results`` (the committed evaluation summary of a family with sparsity
    variants) adds "width × L0" when the run's own family has none. ``cache`` (the activation cache the family
    trained on) states the text it was captured from: its files' digest and the packages that installed them.
    ``matryoshka_results`` (a committed Matryoshka comparison, :mod:`canon_pl.study.matryoshka_results`): written
    there when the run has a Matryoshka of its own, read from there (and said so) when it has none."""
    run = Path(run)
    meta_dir = Path(meta_dir) if meta_dir is not None else None
    facts = gather(run, meta_dir)
    figures = RunLayout(run).report_figures
    figures.mkdir(parents=True, exist_ok=True)
    family, pairs, meta = facts["family"], facts["pairs"], facts["meta"]
    verdicts, (trained, reason) = run_verdicts(family, pairs, meta)
    nested = _matryoshka_comparison(run, facts, trained, reason, matryoshka_results)
    nested_verdict = nested[1] if nested is not None else None
    verdicts += [nested_verdict] if nested_verdict is not None else []
    lines = [f"# canon-pl report: {run.name}", "",
             "Read from the run's files (family exports, `stitching/`, the meta-SAE analysis, `stats/`, the training "
             f"log); open them interactively with `canon-pl view --checkpoints {run.parent}` (the latent links below "
             f"open there).", "",
             f"Arm: {arm_description(run)}.", "",
             *([f"Text: {_cache_text(Path(cache))}.", ""] if cache is not None else []),
             "## Verdicts", "", f"Preconditions: **{'pass' if trained else 'fail'}** — {reason}.", "",
             _markdown_table(pd.DataFrame(_verdict_rows(verdicts, calibration_results))), "",
             _rules_text(nested_verdict is not None), ""]
    if calibration_results is not None:
        from canon_pl.calibration.report import calibration_lines

        lines += calibration_lines(calibration_results, _markdown_table)
    if len(family):
        lines += _family_section(family, figures)
    if pairs:
        lines += _stitching_section(facts, figures)
    if meta is not None:
        lines += _meta_section(meta, facts["examples"])
    if nested is not None:
        lines += _matryoshka_section(*nested)
    elif matryoshka_results is not None:
        lines += ["## Matryoshka prefixes against independent widths", "",
                  f"No comparison is committed at `{matryoshka_results}` yet: `make matryoshka` trains the Matryoshka "
                  f"beside this family and writes it.", ""]
    lines += _evaluation_section(run, pairs)
    novel = [p["classes"]["novel_fraction_definition"] for p in pairs]
    lines += ["## Against the paper", "", _markdown_table(pd.DataFrame([
        {"quantity": "novel fraction, by definition (mean over pairs)", "paper": PAPER["novel_fraction"],
         "this run": sum(novel) / len(novel) if novel else None},
        {"quantity": "path excess over the worse endpoint (max over pairs)", "paper": 0.0,
         "this run": max((p.get("path_excess") or 0.0) for p in pairs) if pairs else None},
        {"quantity": "meta-SAE FVE (k = 4)", "paper": PAPER["fve"], "this run": meta["fve"] if meta else None},
    ])), "", "The paper's figures come from GPT-2 small ReLU + L1 SAEs of 768–98,304 latents trained on ~10^8 tokens; "
        "the verdicts above rest on this run's own controls, not on the size of the gap.", ""]
    lines += _width_l0_results_lines(Path(width_l0_results)) if width_l0_results is not None else []
    lines += _ladder_lines(Path(ladder_results), figures) if ladder_results is not None else []
    lines += stage_times_lines(run)
    path = RunLayout(run).report
    atomic_write_text(path, "\n".join(lines))
    return path


__all__ = ["REPORT_FILE", "arm_description", "family_frame", "family_pairs", "gather", "matryoshka_facts",
           "matryoshka_tables", "run_verdicts", "stuck_at_init_fraction", "training_curves",
           "write_report"]
