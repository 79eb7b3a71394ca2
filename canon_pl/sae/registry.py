"""Building SAEs by architecture name. Importing this module imports every built-in architecture, each of which
registers its SAE class (:data:`SAE_CLASSES`) and its settings class (:data:`SETTINGS_CLASSES`) as it is defined."""

from __future__ import annotations

import torch

import canon_pl.sae.batchtopk
import canon_pl.sae.jumprelu
import canon_pl.sae.matryoshka
import canon_pl.sae.relu
import canon_pl.sae.topk  # noqa: F401 - the built-in architectures register themselves
from canon_pl.sae.base import SAE_CLASSES, SparseAutoencoder
from canon_pl.sae.config import SAEConfig, SAEConfigError
from canon_pl.sae.settings import SETTINGS_CLASSES


def build_sae(cfg: SAEConfig) -> SparseAutoencoder:
    """A freshly initialised SAE of ``cfg.architecture``."""
    if cfg.architecture not in SAE_CLASSES:
        raise SAEConfigError(f"unknown SAE architecture {cfg.architecture!r}; choose one of {', '.join(SAE_CLASSES)}")
    return SAE_CLASSES[cfg.architecture](cfg)


def initial_sae(cfg: SAEConfig, init_seed: int) -> SparseAutoencoder:
    """The SAE exactly as training initialised it from ``init_seed``: each width draws its own stream of the seed,
    and the global RNG is left as it was. With the export's ``training.init_seed`` this rebuilds a trained SAE's
    initial decoder, so an analysis can tell latents that moved from latents still near their random start."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed * 1_000_003 + cfg.d_sae)
        return build_sae(cfg)


__all__ = ["SAE_CLASSES", "SETTINGS_CLASSES", "build_sae", "initial_sae"]
