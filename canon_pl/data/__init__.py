"""Activation sources in plain torch (no Lightning imports).
Its names are imported on first use (:mod:`canon_pl.lazy`)."""

from canon_pl.lazy import lazy_exports

_EXPORTS = {
    "PlantedHierarchyActivations": "canon_pl.data.synthetic",
    "ShardError": "canon_pl.data.shards",
    "ShardIndex": "canon_pl.data.shards",
    "SyntheticSparseActivations": "canon_pl.data.synthetic",
    "iterate_shard_batches": "canon_pl.data.shards",
    "write_activation_shards": "canon_pl.data.shards",
}
"""Public name -> the module that defines it (imported on first use)."""

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
__all__ = sorted(_EXPORTS)
