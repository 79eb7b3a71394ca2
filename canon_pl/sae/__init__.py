"""Pure-torch sparse autoencoders (no Lightning imports).

One file per architecture holds its SAE class and its settings class (its config: frozen, with real fields); both
register themselves by name.
"""

from canon_pl.sae.base import SparseActivations, SparseAutoencoder, TrainStepOutput
from canon_pl.sae.batchtopk import BatchTopKSAE, BatchTopKSettings, batch_topk
from canon_pl.sae.config import SAEConfig, SAEConfigError, SAESettings
from canon_pl.sae.gated import GatedSAE, GatedSettings
from canon_pl.sae.jumprelu import JumpReLUSAE, JumpReLUSettings
from canon_pl.sae.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaBatchTopKSettings
from canon_pl.sae.registry import SAE_CLASSES, SETTINGS_CLASSES, build_sae, initial_sae
from canon_pl.sae.relu import ReLUSAE, ReLUSettings
from canon_pl.sae.topk import TopKSAE, TopKSettings

__all__ = [
    "BatchTopKSAE",
    "BatchTopKSettings",
    "GatedSAE",
    "GatedSettings",
    "JumpReLUSAE",
    "JumpReLUSettings",
    "MatryoshkaBatchTopKSAE",
    "MatryoshkaBatchTopKSettings",
    "ReLUSAE",
    "ReLUSettings",
    "SAEConfig",
    "SAEConfigError",
    "SAESettings",
    "SAE_CLASSES",
    "SETTINGS_CLASSES",
    "SparseActivations",
    "SparseAutoencoder",
    "TopKSAE",
    "TopKSettings",
    "TrainStepOutput",
    "batch_topk",
    "build_sae",
    "initial_sae",
]
