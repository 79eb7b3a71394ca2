"""Lightning wrappers: the SAE LightningModule, activation DataModules and callbacks."""

from canon_pl.training.activations import ActivationDataModule, MultiHookActivationDataModule
from canon_pl.training.callbacks import SAEExportCallback, StepProgressBar
from canon_pl.training.datamodules import (
    ActivationShardDataModule,
    KnownWorldDataModule,
    PlantedHierarchyDataModule,
    ResumableStreamDataModule,
    SyntheticActivationDataModule,
)
from canon_pl.training.loggers import RunCSVLogger, RunTensorBoardLogger, RunWandbLogger
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
from canon_pl.training.parallel import (
    Float32MatmulPrecision,
    RankAgreementCheck,
    SAEDDPStrategy,
    SAEFSDPStrategy,
    SAEThroughputMonitor,
)
from canon_pl.training.multi_hook import MultiHookFamilyModule
from canon_pl.training.schedule import OptimizerSettings
from canon_pl.training.stitching import StitchingCallback
from canon_pl.training.timing import FitTimeBreakdown

__all__ = [
    "OptimizerSettings",
    "ActivationDataModule",
    "ActivationShardDataModule",
    "DecoderRowsDataModule",
    "FitTimeBreakdown",
    "Float32MatmulPrecision",
    "InputShapeError",
    "MetaSAEAnalysisCallback",
    "MetaSAEModule",
    "MultiHookActivationDataModule",
    "MultiHookFamilyModule",
    "NonFiniteError",
    "RankAgreementCheck",
    "RunCSVLogger",
    "RunTensorBoardLogger",
    "RunWandbLogger",
    "ResumableStreamDataModule",
    "SAEDDPStrategy",
    "SAEExportCallback",
    "SAEFSDPStrategy",
    "SAEFamilyModule",
    "SAEModule",
    "SAEThroughputMonitor",
    "StepProgressBar",
    "StitchingCallback",
    "KnownWorldDataModule",
    "PlantedHierarchyDataModule",
    "SyntheticActivationDataModule",
    "default_learning_rate",
]
