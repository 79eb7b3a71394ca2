"""Meta-SAE FVE against its floors as the meta width grows (multiples of d_in, the paper's geometry is 3 x d_in),
on one base SAE, in one run.

For each width: the meta-SAE on the base's decoder rows, the same meta-SAE on random unit rows and on the base's
initial decoder (the floors), and the PCA cap; with ``--inits canon authors`` each width twice, side by side:
canon-pl's default meta-SAE (learned encoder bias, decoder bias from the mean row) and the authors' (no encoder
bias, decoder bias from 0), each with floors trained the same way. Usage (after ``make main``):
``python benchmarks/meta_width_sweep.py checkpoints/family_smollm2/2304 --steps 500``. Ends with
``ratio: <FVE / higher floor at the widest meta width>`` (of the last init). The measurement is
``canon_pl.meta.analysis.meta_width_sweep``, the one the study's meta-SAE stage runs.
"""

from __future__ import annotations

import argparse
import sys
import time

from canon_pl.io import initial_decoder, load_sae
from canon_pl.meta import decoder_rows
from canon_pl.meta.analysis import higher_floor, meta_width_sweep

INITS = {"canon": dict(encoder_bias=True, b_dec_init="mean"), "authors": dict(encoder_bias=False, b_dec_init="zeros")}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base", help="export folder of the base SAE (records its init seed)")
    parser.add_argument("--multiples", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--inits", nargs="+", choices=sorted(INITS), default=["canon"],
                        help="canon: learned b_enc, b_dec from the mean row; authors: no b_enc, b_dec from 0")
    ns = parser.parse_args(argv)
    base = load_sae(ns.base)
    rows = decoder_rows(base)
    initial = initial_decoder(ns.base)
    print(f"base {ns.base}: {rows.shape[0]} rows, d_in {rows.shape[1]}; k {ns.k}, {ns.steps} steps of {ns.batch_size}")
    print("| meta width | × d_in | init | FVE | FVE uncentred | floor: random rows | floor: initial decoder | PCA cap "
          "| s |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratio = float("nan")
    widths = [round(multiple * rows.shape[1]) for multiple in ns.multiples]
    for init_name in ns.inits:
        start = time.perf_counter()
        entries = meta_width_sweep(rows, initial, widths, ns.k, ns.steps, ns.batch_size, ns.lr, seed=0,
                                   **INITS[init_name])
        seconds = (time.perf_counter() - start) / len(entries)
        for entry in entries:
            floors = entry["floors"]
            ratio = entry["fve"] / max(higher_floor(floors), 1e-9)
            init = "—" if floors["initial_decoder"] is None else f"{floors['initial_decoder']:.3f}"
            print(f"| {entry['n_meta']} | {entry['per_d_in']:.3g} | {init_name} | {entry['fve']:.3f} | "
                  f"{entry['fve_uncentred']:.3f} | {floors['random_rows']:.3f} | {init} | {entry['pca_cap']:.3f} | "
                  f"{seconds:.0f} (mean) |", flush=True)
    print(f"ratio: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
