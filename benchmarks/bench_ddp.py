"""Data-parallel scaling: `lightning fit` on one device against the DDP preset on every device, same global batch.

Both arms train the same BatchTopK SAE on the same activation cache (synthetic activations written first, one shard
per global batch so every rank has shards of its own) with the same global batch: one process with ``batch``, or W
ranks with ``batch / W`` each (``ddp`` on W GPUs; ``ddp_cpu_sim``, 2 processes, without GPUs). Throughput is the
module's logged global ``tok/s``, median over the steps after the first five.
Ends with ``ratio: <DDP tokens/s / one-device tokens/s>`` (ideal: W; on this 2-core CPU the two processes share the
cores, so about 1 or less is expected).
Usage: ``python benchmarks/bench_ddp.py [--quick]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from canon_pl.data import SyntheticSparseActivations, write_activation_shards

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit(root: Path, cache: Path, args: argparse.Namespace, batch: int, preset: str | None, devices: int,
        accelerator: str) -> float:
    """Median global tokens/s of one `lightning fit` run."""
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": args.steps, "limit_val_batches": 0, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_checkpointing": False, "default_root_dir": str(root),
                    "accelerator": accelerator, "devices": devices,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(root), "name": "logs"}}},
        "model": {"class_path": "canon_pl.training.SAEModule",
                  "init_args": {"d_in": args.d_in, "d_sae": args.d_sae, "sae": {"k": args.k},
                                "optimizer": {"lr": 1e-3}}},
        "data": {"class_path": "canon_pl.training.ActivationShardDataModule",
                 "init_args": {"path": str(cache), "batch_size": batch, "shards_in_memory": 1,
                               "verify_checksums": False}},
    }
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(json.dumps(config))
    command = [str(BIN / "lightning"), "fit", "--config", str(root / "config.yaml")]
    if preset:
        command += ["--config", str(REPO / "configs" / "trainer" / f"{preset}.yaml"), "--trainer.devices",
                    str(devices), "--trainer.accelerator", accelerator]
    env = {**os.environ, "MASTER_PORT": str(_free_port())}
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=3600, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    rows = list(csv.DictReader((root / "logs" / "version_0" / "metrics.csv").open()))
    rates = [float(r["tok/s"]) for r in rows if r.get("tok/s")]
    return statistics.median(rates[5:] or rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--d-sae", type=int, default=32768)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16384, help="global tokens per step")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="small shapes, few steps (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.d_in, args.d_sae, args.k, args.batch, args.steps = 32, 256, 4, 512, 8
    gpus = torch.cuda.device_count()
    # Several GPUs: all of them under `ddp`. Otherwise 2 CPU processes (`ddp_cpu_sim`) against one CPU process.
    world, preset, accelerator = (gpus, "ddp", "gpu") if gpus > 1 else (2, "ddp_cpu_sim", "cpu")
    where = f"{gpus} x {torch.cuda.get_device_name(0)}" if gpus > 1 else f"{os.cpu_count()} CPU cores"
    print(f"devices: {where}, torch={torch.__version__}; d_in={args.d_in} d_sae={args.d_sae} k={args.k} "
          f"global batch={args.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = SyntheticSparseActivations(args.d_in, 4 * args.d_in, active_per_token=8.0, seed=0)
        n_batches = args.steps + 4 * world  # every rank keeps shards beyond the steps it runs
        write_activation_shards((source.batch(i, args.batch) for i in range(n_batches)), tmp / "cache",
                                tokens_per_shard=args.batch, dtype="float32")
        single = fit(tmp / "single", tmp / "cache", args, args.batch, None, 1, accelerator)
        print(f"one device, batch {args.batch}: {single:12,.0f} tokens/s")
        ddp = fit(tmp / "ddp", tmp / "cache", args, args.batch // world, preset, world, accelerator)
        print(f"{preset} x {world}, batch {args.batch // world} each: {ddp:12,.0f} tokens/s")
    print(f"ratio: {ddp / single:.3f}")


if __name__ == "__main__":
    main()
