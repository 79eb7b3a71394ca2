"""Architecture name -> SAE class."""

from __future__ import annotations

import torch

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


def initial_sae(cfg: SAEConfig, init_seed: int) -> SparseAutoencoder:
    """The SAE exactly as training initialised it from ``init_seed``: each width draws its own stream of the seed,
    and the global RNG is left as it was. With the export's ``training.init_seed`` this rebuilds a trained SAE's
    initial decoder, so an analysis can tell latents that moved from latents still near their random start."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed * 1_000_003 + cfg.d_sae)
        return build_sae(cfg)
