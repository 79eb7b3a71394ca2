"""Lightning wrappers: the SAE LightningModule, activation DataModules and callbacks."""

from canon_pl.training.activations import ActivationDataModule
from canon_pl.training.callbacks import SAEExportCallback, StepProgressBar
from canon_pl.training.datamodules import (
    ActivationShardDataModule,
    ResumableStreamDataModule,
    SyntheticActivationDataModule,
)
from canon_pl.training.meta import (
    DecoderRowsDataModule,
    MetaSAEAnalysisCallback,
    MetaSAEModule,
)
from canon_pl.training.module import (
    InputShapeError,
    NonFiniteError,
    SAEFamilyModule,
    SAEModule,
    default_learning_rate,
)
from canon_pl.training.stitching import StitchingCallback

__all__ = [
    "ActivationDataModule",
    "ActivationShardDataModule",
    "DecoderRowsDataModule",
    "InputShapeError",
    "MetaSAEAnalysisCallback",
    "MetaSAEModule",
    "NonFiniteError",
    "ResumableStreamDataModule",
    "SAEExportCallback",
    "SAEFamilyModule",
    "SAEModule",
    "StepProgressBar",
    "StitchingCallback",
    "SyntheticActivationDataModule",
    "default_learning_rate",
]
