"""Reading and writing SAEs and other outputs (no Lightning imports)."""

from canon_pl.io.atomic import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    sha256_file,
)
from canon_pl.io.checkpoint import load_lightning_checkpoint, safe_torch_load
from canon_pl.io.export import (
    CheckpointError,
    export_sae,
    initial_decoder,
    load_export,
    read_export_config,
    training_data,
    training_record,
)
from canon_pl.io.family import read_family_manifest, write_family_manifest
from canon_pl.io.load import SAEFamily, load_family, load_sae

__all__ = [
    "CheckpointError",
    "SAEFamily",
    "atomic_path",
    "atomic_write_json",
    "atomic_write_text",
    "export_sae",
    "initial_decoder",
    "load_export",
    "load_family",
    "load_lightning_checkpoint",
    "load_sae",
    "read_export_config",
    "training_data",
    "training_record",
    "read_family_manifest",
    "safe_torch_load",
    "sha256_file",
    "write_family_manifest",
]
