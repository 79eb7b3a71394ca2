"""Stitching results under a checkpoints folder, as tables the viewer draws (no Streamlit imports here)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from canon_pl.io.export import PREFIX_OF, CheckpointError, training_record
from canon_pl.io.family import read_family_manifest
from canon_pl.io.layout import RunLayout
from canon_pl.io.validate import malformed_as
from canon_pl.stitching import SETTINGS, StitchingError, latent_classes, read_stitching_results, settings_mismatch
from canon_pl.stitching.path import STEP_KINDS
from canon_pl.viewer.folders import files_inside

MAX_RESULTS_BYTES = 64 * 1024 * 1024


@dataclass
class StitchingPair:
    """One results file: ``label`` is ``<run folder> · <small> → <large>``; ``settings`` its :data:`SETTINGS`;
    ``nested``: its two SAEs are prefixes of one Matryoshka SAE (the larger holds the smaller's latents), not
    independently trained widths."""

    path: Path
    label: str
    settings: dict[str, Any] = field(default_factory=dict)
    nested: bool = False
    run: str = ""
    """The run folder relative to the viewer's root (what a ``?run=`` link names)."""
    widths: tuple[int, int] = (0, 0)
    """``(small, large)`` latents."""

    @property
    def run_folder(self) -> Path:
        return self.path.parent.parent


def is_prefix_family(run_folder: Path) -> bool:
    """Whether the family in ``run_folder`` is a Matryoshka SAE's prefixes (its members' exports record
    ``training.prefix_of``)."""
    try:
        members = read_family_manifest(run_folder)["members"]
    except CheckpointError:
        return False
    return any(PREFIX_OF in training_record(run_folder / folder) for folder in members.values())


def settings_mismatch_in_run(pairs: list[StitchingPair], run_folder: Path) -> str | None:
    """:func:`canon_pl.stitching.settings_mismatch` over the results of ``run_folder`` (``None``: one set)."""
    return settings_mismatch({p.path.name: p.settings for p in pairs if p.run_folder == run_folder})


def find_stitching_results(root: str | os.PathLike, skipped: list[str] | None = None) -> list[StitchingPair]:
    """Every ``stitching/<small>_<large>.json`` below ``root`` that reads as a canon-pl stitching result, the pairs of
    independently trained widths first (the study's claim), then those of Matryoshka prefixes, each by run and
    width; why each other file was left out is appended to ``skipped`` when given (a damaged file is named, never
    fatal)."""
    root = Path(root)
    pairs = []
    nested: dict[Path, bool] = {}
    for path in files_inside(root, f"**/{RunLayout.STITCHING}/*.json"):
        try:
            if path.stat().st_size > MAX_RESULTS_BYTES:
                raise StitchingError(f"{path} is larger than any stitching results file ({MAX_RESULTS_BYTES:,} bytes)")
            summary = read_stitching_results(path)
        except (StitchingError, OSError) as err:
            if skipped is not None:
                skipped.append(str(err))
            continue
        run = path.parent.parent.relative_to(root)
        if path.parent.parent not in nested:
            nested[path.parent.parent] = is_prefix_family(path.parent.parent)
        widths = (int(summary["small"]["d_sae"]), int(summary["large"]["d_sae"]))
        pairs.append(StitchingPair(path, f"{run} · {widths[0]} → {widths[1]}", {key: summary.get(key) for key in SETTINGS},
                                   nested[path.parent.parent], str(run), widths))
    return sorted(pairs, key=lambda p: (p.nested, p.run, p.widths))


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """What the Stitching page says first, in the report's order: the novel fraction by definition (a latent of L
    that fires and lowers S's error when added alone) with its per-chunk spread, the same figure for L's other seed
    against L (the cross-seed control: what seed noise alone gives), then the cosine proxy and how often it agrees.
    ``None`` where the results file does not hold a figure (written without a control or spread)."""
    classes = summary.get("classes") or {}
    control = summary.get("control") or {}
    d_sae = int(summary["large"]["d_sae"])
    novel = classes.get("novel_fraction_definition", summary.get("novel_fraction_definition"))

    def spread(block: Any) -> tuple[float, float] | None:
        return (float(block["mean"]), float(block["std"])) if isinstance(block, dict) and "std" in block else None

    return {"d_sae": d_sae, "novel_definition": novel,
            "n_novel_definition": None if novel is None else round(novel * d_sae),
            "spread": spread(summary.get("spread")),
            "control_definition": control.get("novel_fraction_definition"),
            "control_spread": spread(control.get("spread")), "control_name": control.get("name"),
            "novel_cosine": summary.get("novel_fraction"), "n_novel_cosine": summary.get("n_novel"),
            "agreement": (summary.get("proxy") or {}).get("agreement")}


def granularity_points(summaries: list[dict[str, Any]]) -> pd.DataFrame:
    """The path-granularity curves of stitching summaries (pair and cross-seed control, where measured), one row per
    point: ``pair, against, grouping, threshold, largest group share, path peak`` (what ``granularity_chart``
    draws); empty when no summary has a curve."""
    rows = []
    for s in summaries:
        pair = f"{s['small']['d_sae']} → {s['large']['d_sae']}"
        for against, curve in (("smaller width", s.get("granularity")),
                               ("other seed (control)", (s.get("control") or {}).get("granularity"))):
            for point in (curve or {}).get("points", []):
                rows.append({"pair": pair, "against": against, "grouping": point["grouping"],
                             "threshold": point["threshold"], "largest group share": point["largest_group_share"],
                             "path peak": point["path_peak_over_worse_endpoint"]})
    return pd.DataFrame(rows, columns=["pair", "against", "grouping", "threshold", "largest group share",
                                       "path peak"])


def cosine_histogram(latents: pd.DataFrame, bins: int = 50) -> pd.DataFrame:
    """Counts of large latents per max-cosine bin and class (``start, end, class, count``): what the histogram draws,
    binned here so the browser receives ``bins`` rows, not one per latent."""
    edges = np.linspace(min(float(latents["max_cos"].min()), 0.0), 1.0, bins + 1) if len(latents) else np.zeros(1)
    rows = []
    for kind, group in latents.groupby("class"):
        counts, _ = np.histogram(group["max_cos"].clip(upper=1.0), bins=edges)
        rows += [{"start": a, "end": b, "class": kind, "count": int(c)}
                 for a, b, c in zip(edges[:-1], edges[1:], counts) if c]
    return pd.DataFrame(rows, columns=["start", "end", "class", "count"])


def thin_path(path: pd.DataFrame, max_points: int = 2000) -> pd.DataFrame:
    """At most about ``max_points`` evenly spaced points of the path, always with its two ends (what the path charts
    draw; a path has one point per latent added or removed)."""
    if len(path) <= max_points:
        return path
    keep = np.unique(np.r_[np.arange(0, len(path), math.ceil(len(path) / max_points)), len(path) - 1])
    return path.iloc[keep]


def load_pair(path: str | os.PathLike) -> dict[str, Any]:
    """The summary plus tables: ``latents`` (one row per large latent: max cosine, nearest small latent, class,
    group, ΔMSE alone, firings), ``path`` (every point: step, kind, latents, MSE, FVU, L0), ``groups`` (swap
    groups: which small latents became which large ones), and what the charts draw: ``histogram`` (binned max
    cosines) and ``path_drawn`` (the path thinned to about 2,000 points); ``control`` (``None`` in a file written
    without it) holds the same ``histogram``, ``path`` and ``path_drawn`` for L against L's other seed."""
    summary = read_stitching_results(path, arrays=True)
    with malformed_as(StitchingError, path, "re-run canon-pl stitch"):
        return _tables(summary)


def _tables(summary: dict[str, Any]) -> dict[str, Any]:
    a = summary.pop("arrays")
    classes = latent_classes(summary, a)
    latents = pd.DataFrame({
        "latent": range(a["large_max_cos"].numel()),
        "max_cos": a["large_max_cos"].numpy(),
        "nearest_small": a["large_nearest"].numpy(),
        "class": classes["cosine"],
        "class_by_definition": classes["definition"],
        "group": a["large_group"].numpy(),
        "delta_mse_alone": a["large_delta_mse"].numpy(),
        "fires": a["large_fire_count"].numpy(),
    })
    path_table = _path_table(a)
    small_group = a["small_group"]
    swaps = latents[latents["class"] == "reconstruction"].groupby("group")["latent"].apply(list)
    groups = pd.DataFrame({
        "group": swaps.index,
        "small_latents": [(small_group == g).nonzero().flatten().tolist() for g in swaps.index],
        "large_latents": swaps.values,
    })
    control = None
    if "control_path_fvu" in a:  # the pair's control beside it: L against L's other seed, the same charts
        control_cos = a["control_max_cos"]
        control_latents = pd.DataFrame({"max_cos": control_cos.numpy(), "class": np.where(
            (control_cos < summary["tau"]).numpy(), "novel", "reconstruction")})  # by the file's tau, as the pair's
        control_path = _path_table(a, "control_")
        control = {"histogram": cosine_histogram(control_latents), "path": control_path,
                   "path_drawn": thin_path(control_path)}
    return {"summary": summary, "latents": latents, "path": path_table, "groups": groups,
            "histogram": cosine_histogram(latents), "path_drawn": thin_path(path_table), "control": control}


def _path_table(arrays: dict[str, Any], prefix: str = "") -> pd.DataFrame:
    """One row per point of a stored path (``point, kind, latents, mse, fvu, l0``): the pair's, or with ``prefix``
    ``control_`` its cross-seed control's."""
    return pd.DataFrame({
        "point": range(arrays[f"{prefix}path_mse"].numel()),
        "kind": [STEP_KINDS[int(k)] for k in arrays[f"{prefix}path_kind"]],
        "latents": arrays[f"{prefix}path_n_latents"].numpy(),
        "mse": arrays[f"{prefix}path_mse"].numpy(),
        "fvu": arrays[f"{prefix}path_fvu"].numpy(),
        "l0": arrays[f"{prefix}path_l0"].numpy(),
    })
