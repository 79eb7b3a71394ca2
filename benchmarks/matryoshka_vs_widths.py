"""A Matryoshka BatchTopK SAE against independently trained widths, on the study's activations.

Run from a folder holding the study's activation cache and family (after ``make main``: the repository root):

    python benchmarks/matryoshka_vs_widths.py [--steps 1500]

It trains one Matryoshka SAE of the family's widest width whose nested prefixes are the family's other widths (the
shipped ``configs/family_smollm2.yaml`` with one width and ``MatryoshkaBatchTopKSettings``: same data, steps, k and
learning rate), writes its prefixes as a family (``canon-pl family --prefixes``), stitches every adjacent pair of
prefixes on the cache's held-out activations as the study stitches the independent family, and prints, per width,
the held-out explained variance of the prefix and of the independent SAE, and per pair the novel fractions: for the
independent family, of the larger SAE's latents (with its cross-seed control); for the Matryoshka, of the latents a
larger prefix adds to the smaller one (the shared ones are the same latents). Ends with ``ratio:`` the Matryoshka's
added-latent novel fraction over the independent family's novel fraction, for the widest pair.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from canon_pl import load_family, load_sae
from canon_pl.data import ShardIndex
from canon_pl.io.layout import RunLayout
from canon_pl.stitching import read_stitching_results

REPO = Path(__file__).resolve().parents[1]


def matryoshka_config(run: Path, steps: int | None) -> tuple[dict, list[int]]:
    config = yaml.safe_load((REPO / "configs" / "family_smollm2.yaml").read_text())
    widths = [int(w) for w in config["model"]["init_args"]["widths"]]
    init = config["model"]["init_args"]
    init["widths"], init["base_width"], init["control_seeds"] = [widths[-1]], widths[-1], []
    init["sae"] = {"class_path": "canon_pl.sae.MatryoshkaBatchTopKSettings",
                   "init_args": {**init["sae"], "prefix_fractions": [w / widths[-1] for w in widths[:-1]]}}
    config["trainer"]["default_root_dir"] = str(run)
    config["trainer"]["callbacks"] = [c for c in config["trainer"]["callbacks"]
                                      if not c["class_path"].endswith("StitchingCallback")]  # one width: no pairs
    if steps:
        config["trainer"]["max_steps"] = steps
    return config, widths


@torch.no_grad()
def explained_variance(sae, x: torch.Tensor) -> float:
    residual = (x - sae(x)).pow(2).sum()
    return float(1 - residual / (x - x.mean(dim=0)).pow(2).sum())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the family's)")
    parser.add_argument("--family", default="checkpoints/family_smollm2")
    parser.add_argument("--cache", default="checkpoints/cache_smollm2_l6")
    parser.add_argument("--run", default="checkpoints/matryoshka_smollm2")
    parser.add_argument("--tokens", type=int, default=131072)
    ns = parser.parse_args(argv)
    run, prefixes = Path(ns.run), Path(ns.run) / "prefixes"
    config, widths = matryoshka_config(run, ns.steps)
    bin_dir = Path(sys.executable).parent
    if not (run / str(widths[-1]) / "cfg.json").is_file():
        last = RunLayout(run).last_checkpoint
        resume = ["--ckpt_path", str(last)] if last.is_file() else []  # an interrupted run continues
        if not resume:
            shutil.rmtree(run, ignore_errors=True)
            run.mkdir(parents=True)
            (run / "config.yaml").write_text(yaml.safe_dump(config))
        subprocess.run([str(bin_dir / "lightning"), "fit", "--config", str(run / "config.yaml"),
                        "--trainer.enable_progress_bar", "false", *resume], check=True)
    shutil.rmtree(prefixes, ignore_errors=True)
    subprocess.run([str(bin_dir / "canon-pl"), "family", "--from", str(run / str(widths[-1])), "--prefixes", "--out",
                    str(prefixes)], check=True)
    subprocess.run([str(bin_dir / "canon-pl"), "stitch", str(prefixes), "--data", ns.cache, "--tokens",
                    str(ns.tokens), "--device", "cpu"], check=True)

    index = ShardIndex.load(ns.cache)
    x = torch.cat([index.read_shard(i) for i in index.split_ids("val")])[: ns.tokens]
    independent = load_family(ns.family)
    print(f"held-out explained variance on {x.shape[0]:,} tokens of {ns.cache}:")
    print(f"{'width':>7} {'independent':>12} {'Matryoshka prefix':>18}")
    for w in widths:
        print(f"{w:>7} {explained_variance(load_sae(ns.family, width=w), x):>12.3f} "
              f"{explained_variance(load_sae(prefixes, width=w), x):>18.3f}")
    assert independent.widths[: len(widths)] == widths
    print("novel fractions (cosine < tau) per adjacent pair:")
    print(f"{'pair':>11} {'independent':>12} {'its control':>12} {'Matryoshka, added latents':>26}")
    ratio = None
    for small, large in zip(widths, widths[1:]):
        ours = read_stitching_results(RunLayout(ns.family).stitching_pair(small, large))
        nested = read_stitching_results(RunLayout(prefixes).stitching_pair(small, large), arrays=True)
        added = nested["arrays"]["large_novel_cosine"][small:].float().mean().item()
        control = (ours.get("control") or {}).get("novel_fraction_cosine")
        print(f"{small:>5}_{large:<5} {ours['novel_fraction']:>12.3f} "
              f"{control if control is not None else float('nan'):>12.3f} {added:>26.3f}")
        ratio = added / max(ours["novel_fraction"], 1e-9)
    print(f"ratio: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
