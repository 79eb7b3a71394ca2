"""The ReLU + L1 recipe on the study's activation cache, beside BatchTopK at the same width, steps and data.

For each L1 coefficient (and one BatchTopK reference), trains one SAE with ``SAEModule`` on the cache's training
part (L1 warm-up over the first ``--warmup`` fraction of the steps, no AuxK: ReLU SAEs in the literature train
without it) and measures on the held-out part: explained variance, L0, the fraction of latents that never fire, the
fraction of decoder rows still within cosine 0.7 of their initialisation, and seconds per step. The paper's
stitching SAEs (GPT-2 small, ReLU + L1) sit at L0 36-43; the recipe is the coefficient that lands in 30-60 with
few rows left at initialisation.

``--gated 1 3`` adds gated SAEs at those L1 coefficients (the same warm-up) and ``--jumprelu 32`` JumpReLU SAEs at
those target L0s: the recipes of ``configs/family_smollm2_gated.yaml`` and ``configs/family_smollm2_jumprelu.yaml``
(``--jumprelu-kernels dense sparse``: each JumpReLU arm with both training steps).

Usage (after ``make main`` wrote the cache):
    python benchmarks/relu_recipe.py --cache checkpoints/cache_smollm2_l6 --width 2304 --steps 500 \\
        --coefficients 1 2 3
Ends with ``ratio: <ReLU seconds per step / BatchTopK seconds per step>``.

``--synthetic`` runs the same arms on synthetic activations with a known dictionary instead of the cache (d_in 64,
128 true directions; add ``--width 256 --steps 1000``): the check that a decoder that stays at its initialisation on
real activations is about the data and the budget, not the training step. It also prints the fraction of true
directions recovered (cosine > 0.9).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from canon_pl.data import ShardIndex
from canon_pl.sae import SAESettings, initial_sae
from canon_pl.training import ActivationShardDataModule, OptimizerSettings, SAEModule, SyntheticActivationDataModule
from canon_pl.training.analysis_data import cache_activations


class _StepTimer(L.Callback):
    """Wall time of the training steps after the first (which includes the input statistics)."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.steps = 0
        self.seconds = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx > 0 and self.start is not None:
            self.seconds += time.perf_counter() - self.start
            self.steps += 1


@torch.no_grad()
def held_out_diagnostics(module: SAEModule, x: torch.Tensor, seed: int) -> dict[str, float]:
    """EV, L0, never-firing fraction and rows at init of ``module``'s SAE on raw held-out ``x [N, d_in]``."""
    sae = module.sae.eval()
    x_n = x * module.activation_scale
    acts = torch.cat([sae.encode(chunk, inference=True) for chunk in x_n.split(8192)])
    x_hat = torch.cat([sae.decode(chunk) for chunk in acts.split(8192)])
    ev = 1.0 - float((x_n - x_hat).square().sum() / (x_n - x_n.mean(0)).square().sum())
    init = initial_sae(sae.cfg, seed).W_dec
    init_cos = (F.normalize(sae.W_dec, dim=-1) * F.normalize(init, dim=-1)).sum(-1)
    return {"ev": ev, "l0": float((acts > 0).sum(-1).float().mean()), "never_fires": float(((acts > 0).sum(0) == 0).float().mean()),
            "at_init": float((init_cos >= 0.7).float().mean())}


def train(data: L.LightningDataModule, width: int, steps: int, lr: float, seed: int,
          optimizer: OptimizerSettings | None = None, **arch) -> tuple[SAEModule, float]:
    """One SAE of ``width`` latents trained for ``steps`` on ``data`` (Adam at ``lr``, or ``optimizer`` with its
    schedule); returns it and its seconds per step."""
    L.seed_everything(seed, verbose=False)
    module = SAEModule(d_in=data.d_in, d_sae=width, sae=SAESettings.from_value(arch),
                       optimizer=optimizer or OptimizerSettings(lr=lr), init_seed=seed)
    timer = _StepTimer()
    trainer = L.Trainer(max_steps=steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer],
                        default_root_dir=str(Path("/tmp") / "relu_recipe"))
    trainer.fit(module, data)
    return module, timer.seconds / max(timer.steps, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", help="the study's activation cache (or --synthetic)")
    parser.add_argument("--synthetic", action="store_true", help="synthetic activations with a known dictionary")
    parser.add_argument("--width", type=int, default=2304)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--coefficients", type=float, nargs="*", default=[1.0, 2.0, 3.0])
    parser.add_argument("--gated", type=float, nargs="*", default=[], help="L1 coefficients of gated arms")
    parser.add_argument("--jumprelu", type=float, nargs="*", default=[], help="target L0s of JumpReLU arms")
    parser.add_argument("--jumprelu-kernels", nargs="+", default=["sparse"], choices=["sparse", "dense"],
                        help="the JumpReLU arms' training steps (both: the same recipe with each, side by side)")
    parser.add_argument("--warmup", type=float, default=0.25, help="L1 warm-up as a fraction of --steps")
    parser.add_argument("--k", type=int, default=32, help="k of the BatchTopK reference")
    parser.add_argument("--eval-tokens", type=int, default=32768)
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args()
    if ns.synthetic:
        def make_data() -> L.LightningDataModule:
            return SyntheticActivationDataModule(d_in=64, n_features=128, batch_size=ns.batch_size, seed=ns.seed)

        x = make_data().source.batch(-1, ns.eval_tokens)  # a batch the training stream never uses
    elif ns.cache:
        def make_data() -> L.LightningDataModule:
            return ActivationShardDataModule(ns.cache, batch_size=ns.batch_size, seed=ns.seed)

        x = cache_activations(ns.cache, ns.eval_tokens, ShardIndex.load(ns.cache).d_in)
    else:
        parser.error("give --cache DIR or --synthetic")
    arms = [("batchtopk", dict(architecture="batchtopk", k=ns.k))]
    arms += [(f"relu l1={c:g}", dict(architecture="relu", l1_coefficient=c, l1_warmup_steps=int(ns.warmup * ns.steps)))
             for c in ns.coefficients]
    arms += [(f"gated l1={c:g}", dict(architecture="gated", l1_coefficient=c, l1_warmup_steps=int(ns.warmup * ns.steps)))
             for c in ns.gated]
    arms += [(f"jumprelu target={t:g}" + (f" {kernel}" if len(ns.jumprelu_kernels) > 1 else ""),
              dict(architecture="jumprelu", target_l0=t, kernel=kernel))
             for t in ns.jumprelu for kernel in ns.jumprelu_kernels]
    print(f"{ns.width} latents, {ns.steps} steps of {ns.batch_size} tokens, lr {ns.lr}, L1 warm-up "
          f"{ns.warmup:.0%} of the steps; held-out {x.shape[0]} tokens of {'synthetic data' if ns.synthetic else ns.cache}\n")
    print("| arm | EV | L0 | never fires | rows at init | s/step | true directions recovered |\n|---|---|---|---|---|---|---|")
    seconds = {}
    for name, arch in arms:
        data = make_data()
        module, per_step = train(data, ns.width, ns.steps, ns.lr, ns.seed, **arch)
        d = held_out_diagnostics(module, x, ns.seed)
        seconds[name] = per_step
        recovered = (f"{data.source.recovered_fraction(module.sae.W_dec):.1%}" if ns.synthetic else "—")
        print(f"| {name} | {d['ev']:.3f} | {d['l0']:.1f} | {d['never_fires']:.1%} | {d['at_init']:.1%} | "
              f"{per_step:.3f} | {recovered} |", flush=True)
    print("\n" + "\n".join(f"{name} / batchtopk seconds per step: {per / seconds['batchtopk']:.2f}"
                            for name, per in seconds.items() if name != "batchtopk"))
    reference = next((name for name in seconds if name.startswith("relu")),
                     next(name for name in seconds if name != "batchtopk"))
    print(f"ratio: {seconds[reference] / seconds['batchtopk']:.2f}")


if __name__ == "__main__":
    main()
