"""Where the study's fit spends its time: the shipped family config, shortened, with ``FitTimeBreakdown``.

Run from a folder holding the study's activation cache (after ``make main``: the repository root):

    python benchmarks/fit_time.py --steps 500

It writes a copy of ``configs/family_smollm2.yaml`` with ``--steps`` steps into ``checkpoints/fit_time_probe``
(validations and checkpoints every 250 steps as in the study), runs ``lightning fit`` on it, and prints the
breakdown of ``fit_time.json``: data, SAE steps, validation, checkpoint writes, the rest. Ends with ``ratio:`` the SAE
steps' share of the fit.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from canon_pl.training.timing import fit_time_table, read_fit_time

REPO = Path(__file__).resolve().parents[1]


def probe_config(steps: int, run: Path) -> dict:
    config = yaml.safe_load((REPO / "configs" / "family_smollm2.yaml").read_text())
    config["trainer"]["max_steps"] = steps
    config["trainer"]["default_root_dir"] = str(run)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(run)
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(run / "ckpt")
    return config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--run", default="checkpoints/fit_time_probe")
    ns = parser.parse_args(argv)
    run = Path(ns.run)
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(probe_config(ns.steps, run)))
    lightning = Path(sys.executable).parent / "lightning"
    subprocess.run([str(lightning), "fit", "--config", str(run / "config.yaml"), "--trainer.enable_progress_bar",
                    "false"], check=True)
    record = read_fit_time(run)
    if record is None:
        print(f"no {run}/fit_time.json: the config lost its FitTimeBreakdown callback", file=sys.stderr)
        return 1
    print(f"fit of {record['steps']} steps: {record['total']:.1f} s")
    print(fit_time_table(record))
    print(f"ratio: {record['seconds']['sae_steps'] / record['total']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
