"""canon-pl: SAE families, stitching and meta-SAEs on PyTorch Lightning.

Reproduces *Sparse Autoencoders Do Not Find Canonical Units of Analysis* (Leask et al., ICLR 2025).

``from canon_pl import load_sae`` (and the other names of :data:`__all__`) imports what it names on first use, so
``canon-pl --help`` and the commands that need no model start without importing torch.
"""

from __future__ import annotations

from canon_pl.lazy import lazy_exports
from canon_pl.version import __version__

_EXPORTS = {
    "CheckpointError": "canon_pl.io",
    "SAEFamily": "canon_pl.io",
    "export_sae": "canon_pl.io",
    "load_family": "canon_pl.io",
    "load_sae": "canon_pl.io",
    "BatchTopKSAE": "canon_pl.sae",
    "ReLUSAE": "canon_pl.sae",
    "SAEConfig": "canon_pl.sae",
    "SparseAutoencoder": "canon_pl.sae",
    "TopKSAE": "canon_pl.sae",
    "build_sae": "canon_pl.sae",
}
"""Public name -> the module that defines it."""


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)


__all__ = [
    "BatchTopKSAE",
    "CheckpointError",
    "ReLUSAE",
    "SAEFamily",
    "SAEConfig",
    "SparseAutoencoder",
    "TopKSAE",
    "__version__",
    "build_sae",
    "export_sae",
    "load_family",
    "load_sae",
]
