"""Latent statistics (what each latent responds to): streaming top-k contexts, samples across the activation
distribution, firing frequency, histograms, promoted tokens. Pure torch; ``canon-pl stats`` runs the LM pass."""

from canon_pl.stats.collect import (
    HIST_EDGES,
    LatentStatsCollector,
    collect_statistics,
    unembedding_directions,
)
from canon_pl.stats.files import LatentStatistics, StatsError, write_statistics
from canon_pl.stats.topk import StreamingTopK

__all__ = [
    "HIST_EDGES",
    "LatentStatistics",
    "LatentStatsCollector",
    "StatsError",
    "StreamingTopK",
    "collect_statistics",
    "unembedding_directions",
    "write_statistics",
]
