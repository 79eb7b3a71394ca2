"""The on-disk activation cache: round trip, cross-shard shuffling, resumable position, corruption."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from canon_pl.data import (
    ShardError,
    ShardIndex,
    SyntheticSparseActivations,
    iterate_shard_batches,
    write_activation_shards,
)
from canon_pl.sae import BatchTopKSettings
from canon_pl.training import ActivationShardDataModule, OptimizerSettings, SAEModule
from tests.helpers import make_trainer


@pytest.fixture
def cache(tmp_path: Path) -> tuple[Path, torch.Tensor]:
    source = SyntheticSparseActivations(d_in=16, n_features=32, seed=3)
    batches = [source.batch(i, 100) for i in range(10)]
    write_activation_shards(batches, tmp_path / "cache", tokens_per_shard=256, dtype="float32",
                            metadata={"hook_point": "synthetic"})
    return tmp_path / "cache", torch.cat(batches)


def test_cache_round_trip_and_index(cache) -> None:
    path, original = cache
    index = ShardIndex.load(path)
    assert index.n_tokens == 1000 and index.d_in == 16 and index.metadata["hook_point"] == "synthetic"
    assert torch.equal(torch.cat([index.read_shard(i) for i in range(len(index.shards))]), original)


def test_one_epoch_visits_every_token_once_across_shards(cache) -> None:
    path, original = cache
    index = ShardIndex.load(path)
    batches = list(iterate_shard_batches(index, list(range(len(index.shards))), 64, seed=0, shards_in_memory=2, epochs=1))
    seen = torch.cat(batches)
    assert len(set(map(tuple, seen.tolist()))) == seen.shape[0]  # no token twice
    assert seen.shape[0] >= 1000 - 2 * 64 * 2  # at most a partial batch dropped per group
    first_batch_rows = {tuple(r) for r in batches[0].tolist()}
    shard_of = {tuple(r): i // 256 for i, r in enumerate(original.tolist())}
    assert len({shard_of[r] for r in first_batch_rows}) > 1  # shuffled across shards, not within one


def test_skipping_ahead_yields_exactly_the_remaining_stream(cache) -> None:
    index = ShardIndex.load(cache[0])
    ids = list(range(len(index.shards)))
    full = list(iterate_shard_batches(index, ids, 50, seed=1, shards_in_memory=2, epochs=2))
    skipped = list(iterate_shard_batches(index, ids, 50, seed=1, shards_in_memory=2, start_batch=7, epochs=2))
    assert len(skipped) == len(full) - 7
    assert all(torch.equal(a, b) for a, b in zip(full[7:], skipped))


def test_corrupt_shard_is_named(cache) -> None:
    path, _ = cache
    name = ShardIndex.load(path).shards[1]["file"]
    shard = path / name
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=f"{name} does not match its checksum"):
        ShardIndex.load(path).read_shard(1)


def test_the_index_says_its_format_and_an_older_unstamped_one_still_reads(cache, tmp_path: Path) -> None:
    """A cache names its format and version like every canon-pl document; one written before it did (no ``format``)
    reads as before, while a newer version or another canon-pl document in its place is refused by name."""
    import json
    import shutil

    path, original = cache
    written = json.loads((path / "index.json").read_text())
    assert written["format"] == "canon_pl.activation_cache" and written["format_version"] == 1
    old = tmp_path / "old"
    shutil.copytree(path, old)
    unstamped = {key: value for key, value in written.items() if key not in ("format", "format_version",
                                                                              "canon_pl_version")}
    (old / "index.json").write_text(json.dumps(unstamped))
    index = ShardIndex.load(old)
    assert torch.equal(torch.cat([index.read_shard(i) for i in range(len(index.shards))]), original)
    (old / "index.json").write_text(json.dumps({**written, "format_version": 99}))
    with pytest.raises(ShardError, match="format_version 99, newer than this canon_pl"):
        ShardIndex.load(old)
    (old / "index.json").write_text(json.dumps({**written, "format": "canon_pl.sae"}))
    with pytest.raises(ShardError, match="not a canon-pl activation-cache index.*canon-pl cache"):
        ShardIndex.load(old)


def test_empty_or_missing_cache_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="index.json not found"):
        ShardIndex.load(tmp_path)
    with pytest.raises(ShardError, match="no activations to write"):
        write_activation_shards([], tmp_path / "empty")


def test_sae_trains_from_the_cache(cache, tmp_path: Path) -> None:
    data = ActivationShardDataModule(str(cache[0]), batch_size=64, shards_in_memory=2)
    module = SAEModule(d_in=16, d_sae=64, sae=BatchTopKSettings(k=4), optimizer=OptimizerSettings(lr=3e-3))
    trainer = make_trainer(tmp_path, max_steps=200)
    trainer.fit(module, data)
    (metrics,) = trainer.validate(module, data, verbose=False)
    assert data.train_batches_consumed == 200
    assert 0 < metrics["val/l0"] and metrics["val/explained_variance"] > 0.5


def test_the_export_records_the_hook_point_of_the_data_and_a_contradiction_is_refused(cache, tmp_path: Path) -> None:
    from canon_pl import load_sae
    from canon_pl.training import InputShapeError, SAEExportCallback

    data = ActivationShardDataModule(str(cache[0]), batch_size=64, shards_in_memory=2)
    wrong = SAEModule(d_in=16, d_sae=64, hook_point="model.layers.5", sae=BatchTopKSettings(k=4))
    with pytest.raises(InputShapeError, match="hook_point 'synthetic' but model.init_args.hook_point is 'model.layers.5'"):
        make_trainer(tmp_path / "wrong", max_steps=2).fit(wrong, data)
    assert not (tmp_path / "wrong" / "cfg.json").exists()
    unset = SAEModule(d_in=16, d_sae=64,
                      sae=BatchTopKSettings(k=4))  # the data's hook point is taken and written into the export
    make_trainer(tmp_path / "ok", max_steps=2, callbacks=[SAEExportCallback()]).fit(unset, data)
    assert load_sae(tmp_path / "ok").cfg.hook_point == "synthetic"
    from canon_pl.io import training_data

    assert training_data(tmp_path / "ok") == {"hook_point": "synthetic"}  # all the cache records, for the analyses
