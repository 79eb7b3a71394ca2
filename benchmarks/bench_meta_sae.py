"""Meta-SAE training throughput against the token-SAE step at the same shape, measured in one run.

The meta arm is what `canon-pl meta-sae` runs: ``MetaSAEModule`` + ``DecoderRowsDataModule`` in ``Trainer.fit`` on the
decoder of an exported base SAE with 49152 random unit rows at d_in 768 (the paper's GPT-2 size), 2304 meta-latents,
k 4, batches of 16384 rows. The token arm is ``SAEModule`` with the same shape on random activations held in memory.
Both use the one SAE core, so the ratio should be about 1.
Ends with ``ratio: <meta rows/s / token-SAE rows/s>``. Usage: ``python benchmarks/bench_meta_sae.py [--steps 8]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from canon_pl.io import export_sae
from canon_pl.sae import BatchTopKSettings, SAEConfig, build_sae
from canon_pl.training import DecoderRowsDataModule, MetaSAEModule, OptimizerSettings, SAEModule
from canon_pl.training.datamodules import ResumableStreamDataModule
from canon_pl.training.meta import META_SAE_SETTINGS

D_IN, N_BASE, D_META, K, BATCH = 768, 49152, 2304, 4, 16384


class InMemoryActivations(ResumableStreamDataModule):
    """A few random activation batches, cycled (no generation cost inside the timed loop)."""

    def __init__(self, batches: list[Tensor]) -> None:
        super().__init__()
        self.batches = batches

    @property
    def d_in(self) -> int:
        return self.batches[0].shape[1]

    def train_batches(self, start: int) -> Iterator[tuple[int, Tensor]]:
        index = start
        while True:
            yield index + 1, self.batches[index % len(self.batches)]
            index += 1


def fit(module: L.LightningModule, data: L.LightningDataModule, steps: int) -> float:
    """Rows per second over ``steps`` training steps after one warm-up step."""
    class Timer(L.Callback):
        start = 0.0

        def on_train_batch_start(self, trainer, *args) -> None:
            if trainer.global_step == 1:
                Timer.start = time.perf_counter()

    trainer = L.Trainer(max_steps=steps + 1, accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[Timer()],
                        default_root_dir=tempfile.mkdtemp(prefix="canon_pl_bench_"))  # not the working folder
    trainer.fit(module, data)
    return steps * BATCH / (time.perf_counter() - Timer.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--base", type=int, default=N_BASE, help="rows of the random base SAE")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device={device} threads={torch.get_num_threads()} base={args.base} rows x d_in {D_IN} -> {D_META} "
          f"meta-latents, k={K}, batch={BATCH}, steps={args.steps}")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        base = build_sae(SAEConfig(d_in=D_IN, d_sae=args.base, architecture="batchtopk", k=32))
        export_sae(base, Path(tmp) / "base")
        del base
        meta = fit(MetaSAEModule(d_in=D_IN, d_sae=D_META,
                                 sae=dataclasses.replace(META_SAE_SETTINGS, k=K)), DecoderRowsDataModule(str(Path(tmp) / "base"),
                                                                                   batch_size=BATCH), args.steps)
    batches = [torch.randn(BATCH, D_IN) for _ in range(2)]
    token = fit(SAEModule(d_in=D_IN, d_sae=D_META,
                          sae=BatchTopKSettings(k=K),
                          optimizer=OptimizerSettings(lr=1e-3)), InMemoryActivations(batches), args.steps)
    print(f"meta-SAE (MetaSAEModule + DecoderRowsDataModule): {meta:10,.0f} rows/s")
    print(f"token SAE (SAEModule, same shape):                {token:10,.0f} rows/s")
    print(f"ratio: {meta / token:.3f}")


if __name__ == "__main__":
    main()
