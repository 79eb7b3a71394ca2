"""Three hook points in one pass against three separate runs, measured in one run.

Both arms train, at each of the residual streams after layers 3, 6 and 9 of the bundled SmolLM2, a BatchTopK family
of 1152 and 2304 latents (k 32, batch 4096) for the same number of steps on the Python docs (``pydoc-topics`` when
python3.11-doc is missing), as ``configs/family_smollm2_hooks.yaml`` does. The multi-hook run reads all three hook
points from one LM forward that stops after layer 9 (``MultiHookFamilyModule``); the separate runs each capture
their own hook point (``SAEFamilyModule`` x 3, each stopping after its layer). The model is loaded once and shared:
loading is not in the ratio (it is printed beside it: separate runs are separate processes). Each arm's capture
alone is also timed (the same contexts through the LM) to show where the time goes. Ends with
``ratio: <separate time / one-pass time>`` (goal >= 2).
Usage: ``python benchmarks/bench_multi_hook.py [--steps 16]``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from canon_pl.lm import HookedLanguageModel, load_causal_lm
from canon_pl.sae import BatchTopKSettings
from canon_pl.training import (
    ActivationDataModule,
    MultiHookActivationDataModule,
    MultiHookFamilyModule,
    OptimizerSettings,
    SAEFamilyModule,
)

HOOKS = ["model.layers.3", "model.layers.6", "model.layers.9"]
WIDTHS = [1152, 2304]
DATA = dict(context_length=128, contexts_per_forward=32, block_contexts=256, batch_size=4096)


def fit(module: L.LightningModule, data: L.LightningDataModule, steps: int, root: Path) -> float:
    trainer = L.Trainer(max_steps=steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=root)
    start = time.perf_counter()
    trainer.fit(module, data)
    return time.perf_counter() - start


def capture_seconds(hooked: HookedLanguageModel, contexts: torch.Tensor, hook_points: list[str]) -> float:
    """One forward per 32 contexts read at ``hook_points`` together."""
    start = time.perf_counter()
    for chunk in contexts.split(32):
        hooked.capture_many(chunk, hook_points)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--root", default="/tmp/bench_multi_hook")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    text = "python-docs" if Path("/usr/share/doc/python3.11/html/_sources").is_dir() else "pydoc-topics"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    hooked = HookedLanguageModel(load_causal_lm("smollm2-135m", device=device))
    load = time.perf_counter() - start
    sae_args = dict(d_in=576, widths=WIDTHS, sae=BatchTopKSettings(k=32), optimizer=OptimizerSettings(lr=1e-3))
    print(f"device={device} threads={torch.get_num_threads()} text={text} steps={args.steps} hooks={HOOKS} "
          f"widths={WIDTHS} batch={DATA['batch_size']}")

    multi_data = MultiHookActivationDataModule(hook_points=HOOKS, text=text, **DATA)
    multi_data.hooked = hooked
    one_pass = fit(MultiHookFamilyModule(hook_points=HOOKS, **sae_args), multi_data, args.steps,
                   Path(args.root) / "multi")
    print(f"one pass, 3 hook points x {len(WIDTHS)} widths   {one_pass:8.1f} s")
    separate = 0.0
    for hook_point in HOOKS:
        data = ActivationDataModule(hook_point=hook_point, text=text, **DATA)
        data.hooked = hooked
        seconds = fit(SAEFamilyModule(**sae_args), data, args.steps, Path(args.root) / hook_point)
        print(f"  separate run at {hook_point:<16}    {seconds:8.1f} s")
        separate += seconds
    print(f"three separate runs                  {separate:8.1f} s")

    probe = ActivationDataModule(hook_point=HOOKS[0], text=text, **DATA)
    probe.hooked = hooked
    contexts = torch.stack([c for _, c in zip(range(128), probe._contexts("train", 0))])
    together = capture_seconds(hooked, contexts, HOOKS)
    apart = sum(capture_seconds(hooked, contexts, [h]) for h in HOOKS)
    print(f"capture alone, 128 contexts: one forward to layer 9 {together:.1f} s, three forwards {apart:.1f} s "
          f"(capture ratio {apart / together:.2f})")
    print(f"with a model load per run ({load:.1f} s each; three processes against one): "
          f"{(separate + 3 * load) / (one_pass + load):.3f}")
    print(f"ratio: {separate / one_pass:.3f}")


if __name__ == "__main__":
    main()
