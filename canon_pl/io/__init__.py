"""Reading and writing SAEs and other outputs (no Lightning imports).
Its names are imported on first use (:mod:`canon_pl.lazy`)."""

from canon_pl.lazy import lazy_exports

_EXPORTS = {
    "CheckpointError": "canon_pl.io.export",
    "SAEFamily": "canon_pl.io.load",
    "atomic_path": "canon_pl.io.atomic",
    "atomic_write_json": "canon_pl.io.atomic",
    "atomic_write_text": "canon_pl.io.atomic",
    "export_sae": "canon_pl.io.export",
    "initial_decoder": "canon_pl.io.export",
    "load_export": "canon_pl.io.export",
    "load_family": "canon_pl.io.load",
    "load_lightning_checkpoint": "canon_pl.io.checkpoint",
    "load_sae": "canon_pl.io.load",
    "read_export_config": "canon_pl.io.export",
    "read_family_manifest": "canon_pl.io.family",
    "safe_torch_load": "canon_pl.io.checkpoint",
    "sha256_file": "canon_pl.io.atomic",
    "training_data": "canon_pl.io.export",
    "training_record": "canon_pl.io.export",
    "write_family_manifest": "canon_pl.io.family",
}
"""Public name -> the module that defines it (imported on first use)."""

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
__all__ = sorted(_EXPORTS)
