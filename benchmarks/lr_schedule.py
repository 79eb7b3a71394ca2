"""Learning-rate schedules on the study's activation cache: the shipped constant rate against warm-up + decay.

Each arm trains one BatchTopK SAE (the study's k 32, lr 1e-3, batch 4096, data order and init seed) with
``SAEModule`` on the cache's training part for the same steps, differing only in ``optimizer``'s schedule, and is
measured on the held-out part: explained variance, L0, the fraction of latents that never fire and of decoder rows
still at their initialisation. Arms: ``constant`` (the default), ``warmup`` (a linear warm-up over the first 5 % of
the steps, then constant), ``warmup+linear`` (that warm-up, then a linear decay to 0 over the last 20 %:
dictionary_learning's recipe) and ``warmup+cosine`` (the same with a half cosine to 0.1 x lr).

Usage (after ``make main`` wrote the cache):
    python benchmarks/lr_schedule.py --cache checkpoints/cache_smollm2_l6 --width 1152 --steps 1500
Ends with ``ratio: <held-out FVU of the best scheduled arm / FVU of the constant rate>`` (below 1: a schedule helps).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relu_recipe import held_out_diagnostics, train  # noqa: E402 - the recipe's trainer and held-out diagnostics

from canon_pl.data import ShardIndex  # noqa: E402
from canon_pl.training import ActivationShardDataModule, OptimizerSettings  # noqa: E402
from canon_pl.training.analysis_data import cache_activations  # noqa: E402


def arms(lr: float, steps: int, names: list[str]) -> dict[str, OptimizerSettings]:
    warmup, decay = max(1, steps // 20), max(1, steps // 5)
    every = {
        "constant": OptimizerSettings(lr=lr),
        "warmup": OptimizerSettings(lr=lr, warmup_steps=warmup),
        "warmup+linear": OptimizerSettings(lr=lr, warmup_steps=warmup, decay="linear", decay_steps=decay,
                                           final_fraction=0.0),
        "warmup+cosine": OptimizerSettings(lr=lr, warmup_steps=warmup, decay="cosine", decay_steps=decay,
                                           final_fraction=0.1),
    }
    return {name: every[name] for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="the study's activation cache")
    parser.add_argument("--width", type=int, default=1152)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--arms", nargs="+", default=["constant", "warmup", "warmup+linear", "warmup+cosine"])
    parser.add_argument("--eval-tokens", type=int, default=131072)
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args()
    x = cache_activations(ns.cache, ns.eval_tokens, ShardIndex.load(ns.cache).d_in)
    print(f"BatchTopK k {ns.k}, {ns.width} latents, {ns.steps} steps of {ns.batch_size} tokens, lr {ns.lr}; held-out "
          f"{x.shape[0]} tokens of {ns.cache}\n")
    print("| schedule | EV | FVU | L0 | never fires | rows at init | s/step |\n|---|---|---|---|---|---|---|")
    fvu = {}
    for name, optimizer in arms(ns.lr, ns.steps, ns.arms).items():
        data = ActivationShardDataModule(ns.cache, batch_size=ns.batch_size, seed=ns.seed)
        module, per_step = train(data, ns.width, ns.steps, ns.lr, ns.seed, optimizer=optimizer,
                                 architecture="batchtopk", k=ns.k, dead_tokens_threshold=1_000_000)
        d = held_out_diagnostics(module, x, ns.seed)
        fvu[name] = 1 - d["ev"]
        print(f"| {name} | {d['ev']:.4f} | {fvu[name]:.4f} | {d['l0']:.1f} | {d['never_fires']:.1%} | "
              f"{d['at_init']:.1%} | {per_step:.3f} |", flush=True)
    scheduled = [v for k, v in fvu.items() if k != "constant"]
    if "constant" in fvu and scheduled:
        print(f"\nratio: {min(scheduled) / fvu['constant']:.3f}")


if __name__ == "__main__":
    main()
