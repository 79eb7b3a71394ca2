"""Discovering runs and reading their logged metrics. Never writes; every file is treated as untrusted input."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from canon_pl.io.export import CONFIG_FILE, CheckpointError, read_export_config
from canon_pl.io.family import is_multi_hook_run, read_family_manifest
from canon_pl.io.layout import RunLayout
from canon_pl.io.validate import regular_file
from canon_pl.viewer.folders import ViewerFolderError, files_inside

MAX_METRICS_BYTES = 200 * 1024 * 1024
HEADLINE_METRICS = ("explained_variance", "l0", "ce_recovered", "dead_fraction")


@dataclass
class RunSummary:
    """One exported SAE: its folder, its ``cfg.json`` and its final validation metrics (if logged).

    ``name`` is the folder relative to the checkpoints root (``family_smollm2/4608`` for a family member).
    """

    path: Path
    config: dict[str, Any]
    final_metrics: dict[str, float]
    name: str = ""
    family: str = ""
    """The family folder this SAE is a member or seed control of (listed in its ``family.json``), else its own
    name."""
    seed_control: bool = False
    """Listed under the family's ``controls``: the same width as a member from another init seed."""

    def row(self) -> dict[str, Any]:
        """One table row: identity first, then the headline metrics, then the rest of the validation metrics."""
        sae = self.config.get("sae", {})
        metrics = {key.removeprefix("val/"): value for key, value in self.final_metrics.items()}
        headline = {key: metrics.pop(key) for key in HEADLINE_METRICS if key in metrics}
        return {
            "run": self.name,
            "family": self.family or self.name,
            "seed control": self.seed_control,
            "d_sae": sae.get("d_sae"),
            "k": sae.get("k"),
            **headline,
            "architecture": sae.get("architecture"),
            "hook point": sae.get("hook_point"),
            "steps": self.config.get("training", {}).get("global_step"),
            **metrics,
        }


def read_metrics(run: Path) -> pd.DataFrame:
    """The run's whole training log: every ``logs/version_*/metrics.csv`` (one per start of a run, a resume included)
    in the order they were written, each older segment cut where the next one resumed (its steps from the resumed
    step on were trained again). An empty frame when there is none; an unreadable or oversized segment, or one that
    is not a regular file (a FIFO would block the page), is left out."""
    segments = []
    for path in sorted(files_inside(run, f"{RunLayout.LOGS}/*/metrics.csv"), key=_version_order):
        try:
            if regular_file(path, ViewerFolderError).stat().st_size > MAX_METRICS_BYTES:
                continue
            segments.append(pd.read_csv(path))
        except (ViewerFolderError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
    if len(segments) > 1 and all("step" in s.columns for s in segments):
        segments = [older[older["step"] < newer["step"].min()] for older, newer in zip(segments, segments[1:])] + \
            segments[-1:]
    return pd.concat(segments, ignore_index=True) if segments else pd.DataFrame()


def _version_order(path: Path) -> tuple[int, float]:
    """Lightning's ``version_<n>`` folders by ``n``, any other name by when it was written."""
    name = path.parent.name.removeprefix("version_")
    return (int(name) if name.isdigit() else -1, path.stat().st_mtime)


def member_metrics(run: Path, family_metrics: pd.DataFrame | None = None) -> pd.DataFrame:
    """The run's metrics; for a family member (``<family>/<width>/``) its columns of the family's log, with the
    ``<width>/`` prefix removed (in a multi-hook run, of the run's log with ``<hook point>/<width>/`` removed).
    ``family_metrics`` passes the family's log when the caller has read it already."""
    run = Path(run)
    metrics = read_metrics(run)
    if metrics.empty and (run.parent / "family.json").is_file():
        family = read_metrics(run.parent) if family_metrics is None else family_metrics
        prefix = f"{run.name}/"
        if family.empty and is_multi_hook_run(run.parent.parent):  # one log for every hook point's family
            family, prefix = read_metrics(run.parent.parent), f"{run.parent.name}/{run.name}/"
        columns = {c: c[len(prefix):] for c in family.columns if c.startswith(prefix)}
        keep = [c for c in ("step", "epoch", "tok/s") if c in family.columns]
        metrics = family[keep + list(columns)].rename(columns=columns)
    return metrics


def _final_validation(metrics: pd.DataFrame) -> dict[str, float]:
    columns = [c for c in metrics.columns if c.startswith("val/")]
    if not columns:
        return {}
    rows = metrics.dropna(subset=columns, how="all")
    if rows.empty:
        return {}
    last = rows.iloc[-1]
    return {c: float(last[c]) for c in columns if pd.notna(last[c])}


def _members(family_dir: Path) -> set[str]:
    try:
        return set(read_family_manifest(family_dir)["members"].values())
    except CheckpointError:
        return set()


def _controls(family_dir: Path) -> set[str]:
    try:
        return set(read_family_manifest(family_dir).get("controls") or {})
    except CheckpointError:
        return set()


def find_runs(root: str | Path) -> list[RunSummary]:
    """Every folder below ``root`` (three levels at most: a multi-hook run's members) holding a readable canon-pl
    ``cfg.json``."""
    root = Path(root)
    runs = []
    family_logs: dict[Path, pd.DataFrame] = {}  # a family's log is read once for all its members
    found = [cfg for depth in ("*", "*/*", "*/*/*") for cfg in files_inside(root, f"{depth}/{CONFIG_FILE}")]
    for cfg in sorted(found):
        try:
            config = read_export_config(cfg.parent)
        except (CheckpointError, json.JSONDecodeError, OSError):
            continue
        name = str(cfg.parent.relative_to(root))
        family = None
        group = name  # a family groups its members and seed controls; anything else (a meta-SAE) stands alone
        control = False
        if (cfg.parent.parent / "family.json").is_file():
            if cfg.parent.parent not in family_logs:
                family_logs[cfg.parent.parent] = read_metrics(cfg.parent.parent)
            family = family_logs[cfg.parent.parent]
            control = cfg.parent.name in _controls(cfg.parent.parent)
            if control or cfg.parent.name in _members(cfg.parent.parent):
                group = str(cfg.parent.parent.relative_to(root)) if cfg.parent.parent != root else root.name
        metrics = member_metrics(cfg.parent, family)
        runs.append(RunSummary(cfg.parent, config, _final_validation(metrics), name, group, control))
    # families in width order, not in the string order of their folder names
    return sorted(runs, key=lambda r: (str(r.path.parent), int(r.config.get("sae", {}).get("d_sae") or 0), r.name))


def member_diagnostics(runs: list[RunSummary]) -> pd.DataFrame:
    """Per run (``run``): ``rows at init``, the fraction of its decoder rows still within cosine 0.7 of their
    initialisation (``None`` when the export records no init seed), and ``EV (stitching tokens)``, one minus its FVU
    on its family's stitching tokens, the same tokens for every member and for Matryoshka prefixes, which have no
    validation metrics of their own (``None`` for an SAE no stitching result analysed: a seed control)."""
    from canon_pl.stitching import StitchingError, read_stitching_results
    from canon_pl.stitching.classify import stuck_at_init_fraction
    from canon_pl.stitching.nested import held_out_ev

    ev_of_family: dict[Path, dict[int, float]] = {}
    rows = []
    for run in runs:
        family = run.path.parent
        if family not in ev_of_family:
            summaries = []
            for path in files_inside(family, f"{RunLayout.STITCHING}/*.json"):
                try:
                    summaries.append(read_stitching_results(path))
                except StitchingError:
                    continue
            ev_of_family[family] = held_out_ev(summaries)
        width = int(run.config.get("sae", {}).get("d_sae") or 0)
        member = run.path.name in _members(family) if (family / "family.json").is_file() else False
        rows.append({"run": run.name, "rows at init": stuck_at_init_fraction(run.path),
                     "EV (stitching tokens)": ev_of_family[family].get(width) if member else None})
    return pd.DataFrame(rows, columns=["run", "rows at init", "EV (stitching tokens)"])
