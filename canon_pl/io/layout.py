"""The layout of a run folder, named once: what ``lightning fit``, ``canon-pl stitch / meta-sae / stats / pipeline``,
the callbacks, the viewer and the report write into it and read back.

::

    <run>/
      family.json, <member>/cfg.json + sae.safetensors   the exports (a single SAE: cfg.json in <run> itself)
      hooks.json, <hook point>/                          a multi-hook run: one family folder per hook point
                                                         (each with its own family.json, stitching/, stats/)
      ckpt/last.ckpt, ckpt/epoch=...-step=....ckpt       Lightning checkpoints (last.ckpt a link to the newest)
      logs/version_<n>/metrics.csv                       the CSV logger
      fit_time.json                                      where the fit's time went (FitTimeBreakdown)
      stage_times.json                                   each study stage's wall time and the machine (pipeline)
      stitching/<small>_<large>.json + .safetensors      stitching results, one pair each
      stats/                                             latent statistics (canon-pl stats)
      meta_sae_<width>/                                  a meta-SAE run on member <width> (its own run folder)
      matryoshka/                                        the pipeline's Matryoshka SAE of the widest width and its
                                                         seed controls (their own training run)
      matryoshka_prefixes/                               their prefixes as a family (stitching/, meta_sae_<width>/)
      report.md, report/                                 the study's report and its figures
      .canon-pl.lock                                     held by the one training run writing here
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """Paths inside the run folder ``root`` (nothing is created or checked here)."""

    root: Path

    STITCHING = "stitching"
    STATS = "stats"
    EVALUATION = "evaluation"
    CHECKPOINTS = "ckpt"
    LOGS = "logs"
    FIT_TIME = "fit_time.json"
    STAGE_TIMES = "stage_times.json"
    REPORT = "report.md"
    REPORT_FIGURES = "report"
    LOCK = ".canon-pl.lock"
    META_SAE_PREFIX = "meta_sae_"
    MATRYOSHKA = "matryoshka"
    MATRYOSHKA_PREFIXES = "matryoshka_prefixes"
    MATRYOSHKA_FIT_CONFIG = "fit.yaml"

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def stitching(self) -> Path:
        return self.root / self.STITCHING

    @staticmethod
    def pair_name(small: int, large: int) -> str:
        """The file stem of the stitching results of ``small`` -> ``large`` latents."""
        return f"{small}_{large}"

    def stitching_pair(self, small: int, large: int) -> Path:
        """``stitching/<small>_<large>.json``."""
        return self.stitching / f"{self.pair_name(small, large)}.json"

    @property
    def stats(self) -> Path:
        return self.root / self.STATS

    @property
    def evaluation(self) -> Path:
        """``evaluation/``: ``canon-pl evaluate``'s SAEBench core files and ``summary.json``."""
        return self.root / self.EVALUATION

    @property
    def checkpoints(self) -> Path:
        return self.root / self.CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def logs(self) -> Path:
        return self.root / self.LOGS

    @property
    def fit_time(self) -> Path:
        return self.root / self.FIT_TIME

    @property
    def stage_times(self) -> Path:
        return self.root / self.STAGE_TIMES

    @property
    def report(self) -> Path:
        return self.root / self.REPORT

    @property
    def report_figures(self) -> Path:
        return self.root / self.REPORT_FIGURES

    @property
    def lock(self) -> Path:
        return self.root / self.LOCK

    def hook_family(self, hook_point: str) -> Path:
        """``<hook point>/``: a multi-hook run's family at ``hook_point`` (the name as written, ``model.layers.6``)."""
        return self.root / hook_point

    @property
    def matryoshka(self) -> Path:
        """``matryoshka/``: the Matryoshka SAE trained beside the family (its own run folder)."""
        return self.root / self.MATRYOSHKA

    @property
    def matryoshka_fit_config(self) -> Path:
        """``matryoshka/fit.yaml``: the fit config it was trained with (derived from the family's)."""
        return self.matryoshka / self.MATRYOSHKA_FIT_CONFIG

    @property
    def matryoshka_prefixes(self) -> Path:
        """``matryoshka_prefixes/``: its nested prefixes written as a family, the other seeds' as its controls."""
        return self.root / self.MATRYOSHKA_PREFIXES

    def meta_sae(self, width: int) -> Path:
        """``meta_sae_<width>/``: the meta-SAE trained on member ``width``."""
        return self.root / f"{self.META_SAE_PREFIX}{width}"


__all__ = ["RunLayout"]
