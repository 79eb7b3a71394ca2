"""Matched consistency along the training ladder, from the families it keeps (no training, no activations).

Run after `make ladder` on the machine that kept `checkpoints/ladder_smollm2/rungs/<steps>/`:

    python benchmarks/ladder_consistency.py

For every kept rung: the Hungarian-matched decoder consistency (canon_pl/stitching/consistency.py) of each
width against its other seed (seed consistency) and of each adjacent pair of widths (how much of S the wider L
keeps), as the mean matched cosine and the shares at cosine 0.7 and 0.9. Writes
`results/ladder/smollm2/consistency.json` and prints a table; ends with ``ratio:`` the 2,304-latent seed
consistency (share at 0.9) at the last rung over the first.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from canon_pl import load_sae
from canon_pl.io import read_family_manifest
from canon_pl.io.atomic import atomic_write_json
from canon_pl.stitching.consistency import consistency_summary

REPO = Path(__file__).resolve().parents[1]


def rung_consistency(folder: Path) -> dict:
    manifest = read_family_manifest(folder)
    members = {int(w): load_sae(folder / f).W_dec.detach() for w, f in manifest["members"].items()}
    widths = sorted(members)
    seeds = {}
    for name, control in (manifest.get("controls") or {}).items():
        width = int(control["width"])
        seeds[str(width)] = consistency_summary(members[width], load_sae(folder / name).W_dec.detach())
    pairs = {f"{a}_{b}": consistency_summary(members[a], members[b]) for a, b in zip(widths, widths[1:])}
    return {"across_seeds": seeds, "across_widths": pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rungs", default=str(REPO / "checkpoints" / "ladder_smollm2" / "rungs"))
    parser.add_argument("--out", default=str(REPO / "results" / "ladder" / "smollm2" / "consistency.json"))
    args = parser.parse_args()
    rungs = sorted((int(p.name), p) for p in Path(args.rungs).iterdir() if p.name.isdigit())
    if not rungs:
        raise SystemExit(f"no kept rung under {args.rungs}: run `make ladder` first (on this machine)")
    results = {}
    print("| steps | seeds 1152 (mean cos / ≥0.7 / ≥0.9) | seeds 2304 | 576 in 1152 | 1152 in 2304 | s |")
    print("|---|---|---|---|---|---|")
    for steps, folder in rungs:
        start = time.monotonic()
        results[str(steps)] = rung_consistency(folder)
        r = results[str(steps)]

        def cell(c: dict | None) -> str:
            return "—" if c is None else (f"{c['mean_matched_cosine']:.3f} / {c['shared_at']['0.7']:.1%} / "
                                          f"{c['shared_at']['0.9']:.1%}")

        print(f"| {steps} | {cell(r['across_seeds'].get('1152'))} | {cell(r['across_seeds'].get('2304'))} | "
              f"{cell(r['across_widths'].get('576_1152'))} | {cell(r['across_widths'].get('1152_2304'))} | "
              f"{time.monotonic() - start:.1f} |", flush=True)
    atomic_write_json(args.out, {"format": "canon_pl.ladder_consistency", "format_version": 1, "rungs": results})
    first, last = results[str(rungs[0][0])], results[str(rungs[-1][0])]
    before = first["across_seeds"]["2304"]["shared_at"]["0.9"]
    after = last["across_seeds"]["2304"]["shared_at"]["0.9"]
    print(f"wrote {args.out}")
    print(f"ratio: {after / before if before else float('nan'):.3f}")


if __name__ == "__main__":
    main()
