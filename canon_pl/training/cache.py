"""Writing an ``ActivationDataModule``'s training stream to disk shards, for ``ActivationShardDataModule``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from torch import Tensor
from tqdm.auto import tqdm

from canon_pl.data import ShardIndex, write_activation_shards
from canon_pl.training.activations import ActivationDataModule

CACHE_KEYS = ("model", "hook_point", "text", "context_length", "exclude_bos", "outlier_factor", "val_every")


def cache_metadata(datamodule: ActivationDataModule) -> dict:
    """What a cache must match to stand in for ``datamodule``'s stream."""
    return {key: datamodule.hparams[key] for key in CACHE_KEYS}


def write_activation_cache(datamodule: ActivationDataModule, directory: str | Path, n_tokens: int,
                           dtype: str = "float16", tokens_per_shard: int = 262_144) -> ShardIndex:
    """Capture ``n_tokens`` training activations (shuffled as for training) into safetensors shards."""
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, got {n_tokens}")
    datamodule.load_model()
    progress = tqdm(total=n_tokens, desc="caching activations", unit="tok", unit_scale=True, dynamic_ncols=True)

    def batches() -> Iterator[Tensor]:
        written = 0
        for _, batch in datamodule.train_batches(datamodule.initial_position()):
            take = batch[: n_tokens - written]
            written += take.shape[0]
            progress.update(take.shape[0])
            yield take.cpu()
            if written >= n_tokens:
                return

    try:
        return write_activation_shards(batches(), directory, tokens_per_shard, dtype,
                                       metadata={**cache_metadata(datamodule), "d_in": datamodule.d_in})
    finally:
        progress.close()
