"""What a run folder of the study's family costs on disk, with ``last.ckpt`` as a link (the shipped configs) and as a
copy (Lightning's default ``save_last: true``), side by side in one run.

    python benchmarks/run_folder_size.py

The shipped ``configs/family_smollm2.yaml`` (its model, widths, seed controls, checkpoint callback and exports) is
trained for two checkpoint intervals on synthetic 576-dimensional activations (the bytes depend only on the shapes,
not on what the SAEs learned), once per ``save_last`` setting, each into its own temporary run folder; the script
prints each folder's size by part (checkpoints, exports, logs, the rest). Ends with ``ratio:`` link / copy.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def config_for(run: Path, save_last: object, steps: int) -> dict:
    config = yaml.safe_load((REPO / "configs" / "family_smollm2.yaml").read_text())
    config["trainer"].update({"max_steps": steps, "val_check_interval": steps, "default_root_dir": str(run)})
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(run)
    callbacks = []
    for callback in config["trainer"]["callbacks"]:
        name = callback["class_path"].rsplit(".", 1)[1]
        if name == "StitchingCallback":
            continue  # its results are a few kB; it would need held-out text or a cache
        if name == "ModelCheckpoint":
            callback["init_args"].update({"dirpath": str(run / "ckpt"), "save_last": save_last,
                                          "every_n_train_steps": steps // 2})
        callbacks.append(callback)
    config["trainer"]["callbacks"] = callbacks
    config["data"] = {"class_path": "canon_pl.training.SyntheticActivationDataModule",
                      "init_args": {"d_in": 576, "n_features": 2048, "batch_size": 512, "val_batches": 1}}
    return config


def folder_bytes(path: Path) -> int:
    """Bytes of the files below ``path``; a symbolic link counts as itself, not as what it points to."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def parts(run: Path) -> dict[str, int]:
    sizes = {"ckpt/": folder_bytes(run / "ckpt"), "logs/": folder_bytes(run / "logs")}
    sizes["exports"] = sum(folder_bytes(p) for p in run.iterdir() if p.is_dir() and (p / "cfg.json").is_file())
    sizes["rest"] = folder_bytes(run) - sum(sizes.values())
    return sizes


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="training steps (two checkpoint intervals)")
    args = parser.parse_args(argv)
    totals = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, save_last in (("link", "link"), ("copy", True)):
            run = Path(tmp) / label
            config = Path(tmp) / f"{label}.yaml"
            config.write_text(yaml.safe_dump(config_for(run, save_last, args.steps)))
            fit = subprocess.run([sys.executable, "-m", "canon_pl.cli", "fit", "--config", str(config),
                                  "--trainer.enable_progress_bar", "false"], cwd=tmp, capture_output=True, text=True,
                                 env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if fit.returncode != 0:
                print(fit.stderr[-3000:], file=sys.stderr)
                return fit.returncode
            sizes = parts(run)
            totals[label] = sum(sizes.values())
            shown = ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in sizes.items())
            print(f"save_last: {label:<5} run folder {totals[label] / 2**20:7.1f} MiB ({shown})")
    print(f"ratio: {totals['link'] / totals['copy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
