"""The study's report: ``<run>/report.md`` with PNG figures, read from the files the stages wrote (family exports,
stitching results, meta-SAE analysis, statistics); nothing is recomputed. Figures are the viewer's own Altair charts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from canon_pl.io.atomic import atomic_write_text

PAPER = {"novel_fraction": 0.35, "fve": 0.55, "meta_l0": 4.0}
REPORT_FILE = "report.md"


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


def gather(run: Path, meta_dir: Path | None) -> dict[str, Any]:
    """Everything the report states, read from the run's files: ``family`` (one row per width), ``pairs`` (one row
    per stitched pair), ``paths`` (every pair's path, thinned), ``meta`` (the meta-SAE analysis summary) and
    ``examples`` (decompositions with the latents' top tokens)."""
    from canon_pl.io import read_family_manifest
    from canon_pl.meta import read_meta_analysis
    from canon_pl.viewer import find_runs, find_stitching_results, load_pair

    members = set(read_family_manifest(run)["members"].values())
    family = pd.DataFrame([r.row() for r in find_runs(run) if r.name in members])  # not the meta-SAE beside them
    pairs, paths = [], []
    for found in find_stitching_results(run):
        data = load_pair(found.path)
        s = data["summary"]
        name = f"{s['small']['d_sae']} → {s['large']['d_sae']}"
        pairs.append({"pair": name, "novel_fraction": s["novel_fraction"], "novel": s["n_novel"],
                      "reconstruction": s["n_reconstruction"], "proxy_agreement": s["proxy"]["agreement"],
                      "path_monotone_fraction": s.get("path_monotone_fraction"),
                      "fvu_small": s["fvu_small"], "fvu_large": s["fvu_large"]})
        paths.append(data["path_drawn"].assign(pair=name))
    meta = read_meta_analysis(meta_dir, arrays=True) if meta_dir is not None else None
    return {"family": family, "pairs": pd.DataFrame(pairs), "paths": pd.concat(paths) if paths else pd.DataFrame(),
            "meta": meta, "examples": _examples(run, meta_dir, meta) if meta is not None else []}


def _examples(run: Path, meta_dir: Path, meta: dict[str, Any], n: int = 3) -> list[dict[str, Any]]:
    """The ``n`` most frequent base latents built from 2 to 2k meta-latents, each with its top tokens and, per
    meta-latent (largest first), its activation, promoted tokens and other member latents."""
    from canon_pl.stats import LatentStatistics, StatsError
    from canon_pl.viewer.search import top_centre_tokens

    decomposition = meta["decomposition"]
    width = str((meta.get("base") or {}).get("width"))
    try:
        stats = LatentStatistics.open(run / "stats")
        meta_stats = LatentStatistics.open(meta_dir / "stats") if (meta_dir / "stats").is_dir() else None
        frequency = stats.frequencies(width)
        centre = top_centre_tokens(stats, width)
    except StatsError:
        return []
    strings = stats.token_strings()
    per_latent = decomposition.meta_per_latent()
    k = int(meta.get("k") or 4)
    typical = [j for j in range(decomposition.n_base) if 2 <= int(per_latent[j]) <= 2 * k]
    order = sorted(typical, key=lambda j: -frequency[j].item())
    examples = []
    for j in order[:n]:
        tokens = [strings.get(int(t), f"<{int(t)}>") for t in centre[j].tolist() if t >= 0]
        parts = []
        for m, value in decomposition.of_latent(j):
            promoted = []
            if meta_stats is not None:
                ids = meta_stats.latent(meta_stats.members[0], m)["promoted_tokens"][:5].tolist()
                promoted = [meta_stats.token_strings().get(int(t), f"<{int(t)}>") for t in ids]
            siblings = [b for b, _ in decomposition.users_of(m) if b != j][:5]
            parts.append({"meta": m, "activation": value, "promoted": promoted, "siblings": siblings})
        examples.append({"latent": j, "frequency": float(frequency[j]), "top_tokens": tokens[:8], "meta": parts})
    return examples


def write_report(run: str | os.PathLike, meta_dir: str | os.PathLike | None = None) -> Path:
    """Write ``<run>/report.md`` and its figures (``<run>/report/*.png``); returns the report's path."""
    run = Path(run)
    meta_dir = Path(meta_dir) if meta_dir is not None else None
    facts = gather(run, meta_dir)
    figures = run / "report"
    figures.mkdir(parents=True, exist_ok=True)
    from canon_pl.viewer.charts import (
        family_charts,
        novel_fraction_chart,
        stitching_path_chart,
    )

    lines = [f"# canon-pl report: {run.name}", "",
             "Read from the run's files (family exports, `stitching/`, the meta-SAE analysis, `stats/`); open them "
             f"interactively with `streamlit run apps/viewer.py -- --checkpoints {run.parent}`.", ""]
    family = facts["family"]
    if len(family):
        shown = family[[c for c in ("d_sae", "k", "l0", "explained_variance", "ce_recovered", "dead_fraction")
                        if c in family.columns]].sort_values("d_sae")
        lines += ["## The family", "", _markdown_table(shown), ""]
        for i, chart in enumerate(family_charts(family)):
            lines.append(f"![family {i}](report/{_save(chart, figures / f'family_{i}.png')})")
        lines.append("")
    pairs = facts["pairs"]
    if len(pairs):
        lines += ["## Stitching: novel vs reconstruction latents", "", _markdown_table(pairs), "",
                  f"![novel fraction](report/{_save(novel_fraction_chart(pairs), figures / 'novel_fraction.png')})",
                  f"![stitching paths](report/"
                  f"{_save(stitching_path_chart(facts['paths'], 'stitching paths (FVU vs latents)'), figures / 'paths.png')})",
                  ""]
    meta = facts["meta"]
    if meta is not None:
        lines += ["## Meta-SAE", "", f"Base: the {meta.get('base', {}).get('width')}-latent SAE; {meta['n_meta']} "
                  f"meta-latents, k = {meta.get('k')}.", "",
                  _markdown_table(pd.DataFrame([{"FVE": meta["fve"], "mean meta-latents per latent":
                                                 meta["mean_meta_per_latent"], "dead meta-latents":
                                                 meta["dead_meta_fraction"]}])), ""]
        for example in facts["examples"]:
            lines.append(f"**latent {example['latent']}** (fires on {example['frequency']:.2%} of tokens; top "
                         f"tokens {', '.join(repr(t) for t in example['top_tokens'])})")
            for part in example["meta"]:
                promoted = ", ".join(repr(t) for t in part["promoted"]) or "—"
                lines.append(f"- meta-latent {part['meta']} ({part['activation']:.2f}): promotes {promoted}; also in "
                             f"latents {part['siblings']}")
            lines.append("")
    lines += ["## Against the paper", "", _markdown_table(pd.DataFrame([
        {"quantity": "novel fraction (mean over pairs)", "paper": PAPER["novel_fraction"],
         "this run": float(pairs["novel_fraction"].mean()) if len(pairs) else None},
        {"quantity": "stitching path monotone fraction", "paper": 1.0,
         "this run": float(pairs["path_monotone_fraction"].mean()) if len(pairs) and
         pairs["path_monotone_fraction"].notna().any() else None},
        {"quantity": "meta-SAE FVE (k = 4)", "paper": PAPER["fve"], "this run": meta["fve"] if meta else None},
    ])), "", "The paper's figures come from GPT-2 small SAEs of 768–98,304 latents trained on far more tokens; a "
        "small, briefly trained family on CPU keeps decoders closer to their initialisation, which makes more "
        "latents look novel and lowers the meta-SAE's FVE (benchmarks/RESULTS.md discusses the measured gaps).", ""]
    path = run / REPORT_FILE
    atomic_write_text(path, "\n".join(lines))
    return path


__all__ = ["PAPER", "REPORT_FILE", "gather", "write_report"]
