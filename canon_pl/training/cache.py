"""Writing an ``ActivationDataModule``'s training stream to disk shards, for ``ActivationShardDataModule``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from torch import Tensor
from tqdm.auto import tqdm

from canon_pl.checks import check_counts
from canon_pl.data import ShardIndex, write_activation_shards
from canon_pl.training.activations import ActivationDataModule


def cache_metadata(datamodule: ActivationDataModule) -> dict:
    """What a cache must match to stand in for ``datamodule``'s stream: its provenance."""
    return datamodule.provenance()


def held_out_activations(datamodule: ActivationDataModule, n_tokens: int) -> Iterator[Tensor]:
    """Kept activations ``[n, d_in]`` (CPU) of the held-out documents, in their seeded order, ``n_tokens`` in all (or
    as many as the held-out split has)."""
    written = 0
    batches = datamodule.source.batches(datamodule.source.contexts("val"), datamodule.hparams.contexts_per_forward,
                                        progress="caching held-out activations")
    for batch in batches:
        kept = batch.kept[: n_tokens - written]
        written += kept.shape[0]
        yield kept.cpu()
        if written >= n_tokens:
            return


def write_activation_cache(datamodule: ActivationDataModule, directory: str | Path, n_tokens: int,
                           dtype: str = "float16", tokens_per_shard: int = 262_144,
                           val_tokens: int = 0, device: str = "cpu") -> ShardIndex:
    """Capture ``n_tokens`` training activations (shuffled as for training) into safetensors shards, and
    ``val_tokens`` activations of held-out documents into shards marked ``"split": "val"`` (what validation and the
    analyses read). The LM runs on ``device``."""
    check_counts(n_tokens=n_tokens)
    check_counts(0, val_tokens=val_tokens)
    datamodule.load_model(device)
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
                                       metadata={**cache_metadata(datamodule), "d_in": datamodule.d_in},
                                       val_batches=held_out_activations(datamodule, val_tokens) if val_tokens else None)
    finally:
        progress.close()
