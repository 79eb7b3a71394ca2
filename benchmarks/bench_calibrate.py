"""The calibrate stage against its floor, the training steps it needs, measured in one run.

``canon-pl calibrate`` as ``make main``'s first stage runs it (``configs/calibration_known_world.yaml``: a family of
32 / 64 / 128 latents with a seed control, trained on a known-answer world and on its null twin, every instrument
scored on both, then the meta-SAE on the true dictionaries of the study's shape), each phase timed apart:

- the two fits (``lightning fit`` of the family on each world: the steps a calibration cannot do without);
- scoring every instrument on each trained family (stitching with controls, consistency, the path and granularity,
  probing and absorption, the meta-SAE on the family's decoder with its floors);
- the meta-SAE's power on the true dictionaries (``score_ideal_meta``: a meta-SAE and its four floors on each world).

Ends with ``ratio: <the fits' time / the stage's time>``: the share of the stage spent on the training it needs
(goal >= 0.5: the scoring should cost less than the SAEs it scores).
Usage: ``python benchmarks/bench_calibrate.py [--config configs/calibration_known_world.yaml] [--steps N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import canon_pl.calibration.score as score
import canon_pl.cli.lightning as lightning_cli
from canon_pl.commands.calibrate import calibrate

REPO = Path(__file__).resolve().parents[1]


def timed(phases: dict[str, float], name: str, function: Any, when: Any = None) -> Any:
    """``function`` with its wall time added to ``phases[name]`` (only for the calls ``when(args)`` accepts)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if when is not None and not when(args):
            return function(*args, **kwargs)
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            phases[name] += time.perf_counter() - start
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(REPO / "configs" / "calibration_known_world.yaml"))
    parser.add_argument("--steps", type=int, help="train each world this many steps (default: the config's)")
    parser.add_argument("--meta-steps", type=int, default=300, help="the meta-SAE's and each floor's steps")
    args = parser.parse_args()
    phases: dict[str, float] = defaultdict(float)
    originals = (lightning_cli.run_lightning_cli, score.score_family, score.score_ideal_meta)
    lightning_cli.run_lightning_cli = timed(phases, "fit (both worlds)", originals[0],
                                            when=lambda a: bool(a) and a[0][:1] == ["fit"])
    score.score_family = timed(phases, "scoring (both worlds)", originals[1])
    score.score_ideal_meta = timed(phases, "meta-SAE on the true dictionaries", originals[2])
    fit_args = ["--trainer.max_steps", str(args.steps)] if args.steps else []
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            calibrate(config=args.config, out=out, fit_args=fit_args, meta_steps=args.meta_steps)
            stage = time.perf_counter() - start
    finally:
        lightning_cli.run_lightning_cli, score.score_family, score.score_ideal_meta = originals
    print(f"\n{'phase':<36}{'seconds':>9}{'share':>8}")
    for name, seconds in phases.items():
        print(f"{name:<36}{seconds:>9.1f}{seconds / stage:>8.1%}")
    rest = stage - sum(phases.values())
    print(f"{'(the rest: configs, writing)':<36}{rest:>9.1f}{rest / stage:>8.1%}")
    print(f"the stage: {stage:.1f} s")
    print(f"ratio: {phases['fit (both worlds)'] / stage:.3f}")


if __name__ == "__main__":
    main()
