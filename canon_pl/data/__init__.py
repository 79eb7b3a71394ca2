"""Activation sources in plain torch (no Lightning imports)."""

from canon_pl.data.shards import (
    ShardError,
    ShardIndex,
    iterate_shard_batches,
    write_activation_shards,
)
from canon_pl.data.synthetic import PlantedHierarchyActivations, SyntheticSparseActivations

__all__ = ["PlantedHierarchyActivations", "ShardError", "ShardIndex", "SyntheticSparseActivations", "iterate_shard_batches", "write_activation_shards"]
