"""The curves that chose the study's budget, from a family run's own training log: held-out EV of every member and
each pair's novel fractions (by definition, and against the cross-seed control) at every validation.

Usage: ``python benchmarks/study_curves.py checkpoints/family_smollm2`` after ``make main`` (or ``lightning fit
--config configs/family_smollm2.yaml``). Prints markdown tables for benchmarks/RESULTS.md and ends with
``ratio: <novel fraction against the smaller width / against the other seed>`` for the last pair at the last
validation (1 = no width effect beyond seed noise). Given several runs (the study's arms, e.g. ``checkpoints/
family_smollm2 checkpoints/family_smollm2_relu``), it also prints them side by side at every validation step they
share: equal budget; the ratio is then the first run's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from canon_pl.viewer.runs import read_metrics


def curves(run: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(EV per member by step, novel fractions per pair by step) from the run's metrics.csv."""
    metrics = read_metrics(run)
    if metrics.empty:
        raise SystemExit(f"no metrics.csv under {run}/logs: train the family first")
    ev_columns = sorted((c for c in metrics.columns if c.endswith("/val/explained_variance")),
                        key=lambda c: (int(c.split("/")[0].split("_")[0]), c))
    ev = metrics[["step", *ev_columns]].dropna(subset=ev_columns, how="all")
    ev.columns = ["step", *[c.split("/")[0] for c in ev_columns]]
    novel_columns = [c for c in metrics.columns if c.startswith("stitch/") and c.split("/")[2] in (
        "novel_fraction_definition", "control_novel_fraction_definition", "novel_fraction", "control_novel_fraction",
        "stuck_at_init_fraction", "path_excess")]
    novel = metrics[["step", *novel_columns]].dropna(subset=novel_columns, how="all")
    return ev, novel


def markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |\n|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, *rows])


def side_by_side(runs: list[Path]) -> pd.DataFrame:
    """One row per (run, validation step shared by every run): the widths' EV and each pair's novel fraction by
    definition with its cross-seed control."""
    frames = []
    for run in runs:
        ev, novel = curves(run)
        widths = [c for c in ev.columns if c != "step" and "_seed" not in c]
        merged = ev[["step", *widths]].merge(novel, on="step", how="inner")
        keep = {"step": "step", **{w: f"EV {w}" for w in widths}}
        for column in merged.columns:
            parts = column.split("/")
            if column.startswith("stitch/") and parts[2] in ("novel_fraction_definition",
                                                              "control_novel_fraction_definition"):
                keep[column] = f"{parts[1].replace('_', '→')} {'control' if parts[2].startswith('control') else 'novel'}"
        frames.append(merged[list(keep)].rename(columns=keep).assign(run=run.name))
    shared = set.intersection(*(set(f["step"]) for f in frames))
    table = pd.concat(frames)
    table = table[table["step"].isin(shared)].sort_values(["step", "run"])
    return table[["step", "run", *[c for c in table.columns if c not in ("step", "run")]]]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="family run folders (with logs/); several = the arms side by side")
    ns = parser.parse_args(argv)
    runs = [Path(r) for r in ns.runs]
    for run in runs:
        ev, novel = curves(run)
        print(f"## {run}\n\nheld-out explained variance by step\n")
        print(markdown(ev.astype({"step": int})))
        print("\nnovel fractions by step (definition; cosine; against the other seed)\n")
        print(markdown(novel.astype({"step": int}).T.reset_index().rename(columns={"index": "quantity"})
                       .pipe(lambda f: f.set_axis(["quantity", *[f"step {int(s)}" for s in novel["step"]]], axis=1))
                       .iloc[1:]))
        print()
    if len(runs) > 1:
        print("## side by side at equal steps\n")
        print(markdown(side_by_side(runs).astype({"step": int})))
    ev, novel = curves(runs[0])
    last = novel.iloc[-1]
    pairs = sorted({c.split("/")[1] for c in novel.columns if c.startswith("stitch/")},
                   key=lambda p: int(p.split("_")[0]))
    pair = pairs[-1]
    ratio = last[f"stitch/{pair}/novel_fraction_definition"] / max(
        last[f"stitch/{pair}/control_novel_fraction_definition"], 1e-9)
    print(f"\nratio: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
