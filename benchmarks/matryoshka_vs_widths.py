"""A Matryoshka BatchTopK SAE against independently trained widths, on the study's activations.

Run from a folder holding the study's activation cache and family (after ``make main``: the repository root):

    python benchmarks/matryoshka_vs_widths.py [--pipeline configs/pipeline_smollm2.yaml]

The pipeline's ``matryoshka`` stage (:func:`canon_pl.commands.matryoshka.compare_matryoshka`, skipped parts already
done): one Matryoshka SAE of the family's widest width whose nested prefixes are the family's other widths and the
same SAE from its control seeds, trained like the family; its prefixes written as a family with the other seeds'
as controls, stitched on the pipeline's held-out activations as the family is. Prints, per width, the held-out EV of
the independent SAE and of the prefix, and per pair the novel fractions by definition with their cross-seed
controls: of the independent larger SAE, and of the latents a larger prefix adds. Ends with ``ratio:`` the novel
fraction beyond its control of the Matryoshka's added latents over the independent family's, for the widest pair.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from canon_pl.commands.matryoshka import compare_matryoshka
from canon_pl.commands.pipeline import read_pipeline_config
from canon_pl.study.stages import stage_done
from canon_pl.study.report import gather
from canon_pl.stitching.nested import by_widths


def _fmt(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="configs/pipeline_smollm2.yaml")
    parser.add_argument("--device", default="cpu")
    ns = parser.parse_args(argv)
    cfg = read_pipeline_config(Path(ns.pipeline))
    cfg.setdefault("matryoshka", None)
    section = cfg["matryoshka"] or {}
    t0 = time.monotonic()
    if not (cfg["matryoshka"] is not None and stage_done("matryoshka", {**cfg, "meta_width": cfg["widths"][-1]})):
        code = compare_matryoshka(run=cfg["run"], fit_config=cfg["fit_config"],
                                  control_seeds=section.get("control_seeds"), fit_args=section.get("fit_args"),
                                  stitch_options=cfg.get("stitch"), meta_options=None, device=ns.device)
        if code != 0:
            return code
        print(f"the Matryoshka comparison took {time.monotonic() - t0:.0f} s (training skipped when already done)")
    facts = gather(cfg["run"], None)
    independent = by_widths(facts["pairs"])
    print(f"{'pair':>11} {'EV S ind.':>9} {'EV S pre.':>9} {'EV L ind.':>9} {'EV L pre.':>9} {'ind. novel':>10} "
          f"{'control':>7} {'added novel':>11} {'control':>7} {'excess ind.':>11} {'excess pre.':>11}")
    ratio = None
    for n in facts["matryoshka"]["pairs"]:
        s, a = n["summary"], n["added"]
        p = independent[(s["small"]["d_sae"], s["large"]["d_sae"])]
        ind, ind_c = p["classes"]["novel_fraction_definition"], p["control"]["novel_fraction_definition"]
        add, add_c = a["novel_fraction_definition"], a["control_novel_fraction_definition"]
        print(f"{s['small']['d_sae']:>5}_{s['large']['d_sae']:<5} {1 - p['fvu_small']:9.3f} {1 - s['fvu_small']:9.3f} "
              f"{1 - p['fvu_large']:9.3f} {1 - s['fvu_large']:9.3f} {_fmt(ind):>10} {_fmt(ind_c):>7} {_fmt(add):>11} "
              f"{_fmt(add_c):>7} {p['path_excess']:11.3f} {s['path_excess']:11.3f}")
        ratio = (add - add_c) / max(ind - ind_c, 1e-9)
    print(f"ratio: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
