"""The instruments on known answers (issue 52): `canon-pl calibrate` on the calibration family, timed (what the
pipeline's calibrate stage costs). Writes results/calibration/calibration_small.json (the scores) and prints the
instrument table; `benchmarks/known_world_ladder.py` scores the family of the study's shape over training. The ratio: the definition's accuracy over the cosine proxy's on the planted world,
measured side by side on the same latents.

    python benchmarks/calibration_known_world.py [--out checkpoints/calibration_known_world]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "calibration"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "checkpoints" / "calibration_known_world"))
    args = parser.parse_args()
    from canon_pl.calibration.report import read_calibration
    from canon_pl.commands.calibrate import calibrate

    machine = {"date": date.today().isoformat(), "machine": platform.machine(), "cpus": torch.get_num_threads(),
               "torch": torch.__version__}
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    calibrate(config=str(REPO / "configs" / "calibration_known_world.yaml"), out=args.out)
    seconds = time.perf_counter() - started
    document = read_calibration(args.out)
    (RESULTS / "calibration_small.json").write_text(json.dumps(
        {**machine, "seconds": seconds, "instruments": document["instruments"],
         "worlds": document["worlds"], "ideal_meta": document["ideal_meta"]},
        indent=1, default=float) + "\n")
    print(f"calibrate: {seconds:.0f} s (both worlds trained and scored, the meta-SAE on true dictionaries)")
    planted = document["worlds"]["planted"]["pairs"]
    definition = sum(p["definition"]["accuracy"] for p in planted) / len(planted)
    proxy = sum(p["cosine"]["accuracy"] for p in planted) / len(planted)
    print(f"definition accuracy {definition:.3f}, cosine proxy accuracy {proxy:.3f} (planted world, mean of pairs)")
    print(f"ratio: {definition / proxy:.3f}")


if __name__ == "__main__":
    main()
