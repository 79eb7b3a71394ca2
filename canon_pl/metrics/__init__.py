"""Metrics used everywhere (docs/design.md 1.4), as torchmetrics ``Metric``s."""

from canon_pl.metrics.reconstruction import (
    ExplainedVariance,
    FractionOfVarianceUnexplained,
)
from canon_pl.metrics.sparsity import (
    DeadLatentFraction,
    FiringDensity,
    FiringDensityHistogram,
    MeanL0,
)
from canon_pl.metrics.spliced import SplicedLanguageModelLoss
from canon_pl.sae.registry import sae_training_flops  # each architecture counts its own step

__all__ = [
    "DeadLatentFraction",
    "ExplainedVariance",
    "FiringDensity",
    "FiringDensityHistogram",
    "FractionOfVarianceUnexplained",
    "MeanL0",
    "SplicedLanguageModelLoss",
    "sae_training_flops",
]
