"""canon-pl: SAE families, stitching and meta-SAEs on PyTorch Lightning.

Reproduces *Sparse Autoencoders Do Not Find Canonical Units of Analysis* (Leask et al., ICLR 2025).
"""

from canon_pl.version import __version__

from canon_pl.io import (  # noqa: E402
    CheckpointError,
    SAEFamily,
    export_sae,
    load_family,
    load_sae,
)
from canon_pl.sae import (  # noqa: E402
    BatchTopKSAE,
    ReLUSAE,
    SAEConfig,
    SparseAutoencoder,
    TopKSAE,
    build_sae,
)

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
