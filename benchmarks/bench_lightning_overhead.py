"""Lightning overhead: ``Trainer.fit`` on cached activations against a bare PyTorch loop doing the same steps.

Both arms read the same safetensors activation cache (written first from synthetic activations, d_in 576) in the
same order and run the same BatchTopK step (d_sae 4608, k 32, batch 4096, Adam, decoder constraint). The Lightning
arm runs ``SAEModule`` + ``ActivationShardDataModule`` with its default logging (every 50 steps), no progress bar
and no checkpointing. Ends with ``ratio: <Lightning tokens/s / bare-loop tokens/s>`` (goal >= 0.9).
Usage: ``python benchmarks/bench_lightning_overhead.py [--steps 40]``.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from canon_pl.data import (
    ShardIndex,
    SyntheticSparseActivations,
    iterate_shard_batches,
    write_activation_shards,
)
from canon_pl.sae import BatchTopKSettings
from canon_pl.training import ActivationShardDataModule, OptimizerSettings, SAEModule

D_IN, D_SAE, K, BATCH = 576, 4608, 32, 4096


def bare_loop(index: ShardIndex, steps: int) -> float:
    module = SAEModule(d_in=D_IN, d_sae=D_SAE, sae=BatchTopKSettings(k=K), optimizer=OptimizerSettings(lr=1e-3))
    sae = module.sae
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3, betas=(0.9, 0.99))
    batches = iterate_shard_batches(index, list(range(len(index.shards))), BATCH, seed=0)
    start = time.perf_counter()
    scale = None
    for _, x in zip(range(steps), batches):
        if scale is None:
            scale = math.sqrt(D_IN / x.pow(2).sum(-1).mean().item())
            with torch.no_grad():
                sae.b_dec.copy_((x * scale).mean(0))
        loss = sae.training_forward(x * scale).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sae.normalize_decoder()
    return time.perf_counter() - start


def lightning_fit(path: Path, steps: int) -> float:
    data = ActivationShardDataModule(str(path), batch_size=BATCH, val_path=str(path))
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=path)  # its own folder: the working folder may hold another run's lock
    module = SAEModule(d_in=D_IN, d_sae=D_SAE, sae=BatchTopKSettings(k=K), optimizer=OptimizerSettings(lr=1e-3))
    start = time.perf_counter()
    trainer.fit(module, data)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        source = SyntheticSparseActivations(D_IN, 2048, active_per_token=16, seed=0)
        index = write_activation_shards((source.batch(i, BATCH) for i in range(args.steps + 2)), tmp,
                                        tokens_per_shard=8 * BATCH, dtype="float32")
        print(f"threads={torch.get_num_threads()} steps={args.steps} d_in={D_IN} d_sae={D_SAE} k={K} batch={BATCH}")
        bare = bare_loop(index, args.steps)
        lit = lightning_fit(Path(tmp), args.steps)
    tokens = args.steps * BATCH
    print(f"bare PyTorch loop     {tokens / bare:10,.0f} tokens/s ({bare:.1f} s)")
    print(f"Lightning Trainer.fit {tokens / lit:10,.0f} tokens/s ({lit:.1f} s)")
    print(f"ratio: {bare / lit:.3f}")


if __name__ == "__main__":
    main()
