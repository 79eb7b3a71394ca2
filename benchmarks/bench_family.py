"""A family of five widths on one activation stream against five separate runs, measured in one run.

Both arms train BatchTopK SAEs of 576 x {2, 4, 8, 16, 32} latents (k 32, batch 4096) for the same number of steps
on SmolLM2 layer-6 activations of the Python docs (or ``pydoc-topics`` when python3.11-doc is missing). The family
captures each batch once (``SAEFamilyModule``); the separate runs each recompute the activations
(``SAEModule`` x 5). The model is loaded once and shared: loading is not what is compared.
Ends with ``ratio: <separate time / family time>`` (goal >= 2). Usage: ``python benchmarks/bench_family.py``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from canon_pl.lm import HookedLanguageModel, load_causal_lm
from canon_pl.sae import BatchTopKSettings
from canon_pl.training import ActivationDataModule, OptimizerSettings, SAEFamilyModule, SAEModule

WIDTHS = [576 * m for m in (2, 4, 8, 16, 32)]


def fit(module: L.LightningModule, data: ActivationDataModule, steps: int) -> float:
    trainer = L.Trainer(max_steps=steps, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tempfile.mkdtemp(prefix="canon_pl_bench_"))  # not the working folder
    start = time.perf_counter()
    trainer.fit(module, data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=7)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    text = "python-docs" if Path("/usr/share/doc/python3.11/html/_sources").is_dir() else "pydoc-topics"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hooked = HookedLanguageModel(load_causal_lm("smollm2-135m", device=device))

    def data() -> ActivationDataModule:
        dm = ActivationDataModule(hook_point="model.layers.6", text=text, block_contexts=256, batch_size=4096)
        dm.hooked = hooked
        return dm

    sae_args = dict(d_in=576, sae=BatchTopKSettings(k=32), optimizer=OptimizerSettings(lr=1e-3), hook_point="model.layers.6")
    print(f"device={device} threads={torch.get_num_threads()} text={text} steps={args.steps} batch=4096 "
          f"widths={WIDTHS}")
    family = fit(SAEFamilyModule(widths=WIDTHS, **sae_args), data(), args.steps)
    print(f"family (one stream, 5 SAEs)          {family:8.1f} s")
    separate = 0.0
    for width in WIDTHS:
        seconds = fit(SAEModule(d_sae=width, **sae_args), data(), args.steps)
        print(f"  separate run, d_sae={width:<6}        {seconds:8.1f} s")
        separate += seconds
    print(f"five separate runs (5 streams)       {separate:8.1f} s")
    print(f"ratio: {separate / family:.3f}")


if __name__ == "__main__":
    main()
