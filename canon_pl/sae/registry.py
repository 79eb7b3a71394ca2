"""Architecture name -> SAE class."""

from __future__ import annotations

from canon_pl.sae.base import SparseAutoencoder
from canon_pl.sae.batchtopk import BatchTopKSAE
from canon_pl.sae.config import SAEConfig
from canon_pl.sae.jumprelu import JumpReLUSAE
from canon_pl.sae.relu import ReLUSAE
from canon_pl.sae.topk import TopKSAE

SAE_CLASSES: dict[str, type[SparseAutoencoder]] = {
    cls.architecture: cls for cls in (BatchTopKSAE, TopKSAE, ReLUSAE, JumpReLUSAE)
}


def build_sae(cfg: SAEConfig) -> SparseAutoencoder:
    """A freshly initialised SAE of ``cfg.architecture``."""
    return SAE_CLASSES[cfg.architecture](cfg)
