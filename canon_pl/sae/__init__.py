"""Pure-torch sparse autoencoders (no Lightning imports)."""

from canon_pl.sae.base import SparseActivations, SparseAutoencoder, TrainStepOutput
from canon_pl.sae.batchtopk import BatchTopKSAE, batch_topk
from canon_pl.sae.config import ARCHITECTURES, SAEConfig, SAEConfigError
from canon_pl.sae.registry import SAE_CLASSES, build_sae, initial_sae
from canon_pl.sae.relu import ReLUSAE
from canon_pl.sae.topk import TopKSAE

__all__ = [
    "ARCHITECTURES",
    "BatchTopKSAE",
    "ReLUSAE",
    "SAEConfig",
    "SAEConfigError",
    "SAE_CLASSES",
    "SparseActivations",
    "SparseAutoencoder",
    "TopKSAE",
    "TrainStepOutput",
    "batch_topk",
    "build_sae",
    "initial_sae",
]
